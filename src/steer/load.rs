//! Loading the steering object without aya's `EbpfLoader`, and the XDP link.
//!
//! aya 0.13's loader parses the whole vmlinux BTF before it looks at the object (aya issue
//! #1172): 40-60 ms on this project's machines, for a program that needs no BTF at all. Here
//! the ELF is parsed with `aya-obj`, the maps are created with aya's [`MapData::create`],
//! their fds are relocated into the instructions with aya-obj's relocation API, and the
//! program is loaded with libbpf's `bpf_prog_load` and attached with `bpf_link_create`
//! (BPF_XDP links, kernel >= 5.9). libbpf's own object loader (`bpf_object__open`) is not an
//! option: libbpf 1.x rejects the legacy `maps` ELF section that aya-ebpf 0.1.1 emits.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use aya::maps::{Map, MapData};
use aya_obj::Object;

use super::{SteerError, XdpMode};

/// `BPF_MAP_TYPE_*` numbers of the maps the steering object declares.
const MAP_TYPE_ARRAY: u32 = 2;
const MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const MAP_TYPE_XSKMAP: u32 = 17;

/// Bytes kept for the verifier's log when a load fails (the kernel truncates beyond).
const LOG_SIZE: usize = 256 << 10;

/// The program loaded into the kernel with its maps, not attached anywhere yet.
pub(crate) struct Loaded {
    pub(crate) prog: OwnedFd,
    pub(crate) maps: HashMap<String, Map>,
}

/// Parses `object`, creates its maps, relocates and loads the program `prog_name`.
pub(crate) fn load(object: &[u8], prog_name: &'static str) -> Result<Loaded, SteerError> {
    let mut obj = Object::parse(object).map_err(SteerError::Parse)?;
    let mut maps = HashMap::new();
    let mut defs = Vec::new();
    for (name, def) in obj.maps.drain() {
        let kind = def.map_type();
        let data =
            MapData::create(def.clone(), &name, None).map_err(|source| SteerError::CreateMap {
                name: name.clone(),
                source,
            })?;
        defs.push((name.clone(), def));
        maps.insert(name, (kind, data));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        defs.iter().map(|(name, def)| {
            let fd = maps[name].1.fd().as_fd().as_raw_fd();
            (name.as_str(), fd, def)
        }),
        &text_sections,
    )
    .map_err(|e| SteerError::Relocate(error_chain(&e)))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| SteerError::Relocate(error_chain(&e)))?;
    let program = obj
        .programs
        .get(prog_name)
        .ok_or(SteerError::MissingProgram(prog_name))?;
    let function = obj
        .functions
        .get(&program.function_key())
        .ok_or(SteerError::MissingProgram(prog_name))?;
    let prog = load_xdp(prog_name, &obj.license, &function.instructions)?;
    let maps = maps
        .into_iter()
        .map(|(name, (kind, data))| {
            let map = match kind {
                MAP_TYPE_ARRAY => Map::Array(data),
                MAP_TYPE_PERCPU_ARRAY => Map::PerCpuArray(data),
                MAP_TYPE_XSKMAP => Map::XskMap(data),
                _ => Map::Unsupported(data),
            };
            (name, map)
        })
        .collect();
    Ok(Loaded { prog, maps })
}

/// Loads XDP instructions with `bpf_prog_load`; a refusal carries the verifier's log.
pub(crate) fn load_xdp(
    name: &str,
    license: &std::ffi::CStr,
    insns: &[aya_obj::generated::bpf_insn],
) -> Result<OwnedFd, SteerError> {
    const _: () = assert!(
        std::mem::size_of::<aya_obj::generated::bpf_insn>()
            == std::mem::size_of::<libbpf_sys::bpf_insn>()
    );
    let c_name = CString::new(name).map_err(|_| SteerError::MissingProgram("(bad name)"))?;
    let mut log = vec![0u8; LOG_SIZE];
    let mut opts = libbpf_sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as _,
        expected_attach_type: libbpf_sys::BPF_XDP,
        // log_level 0 with a buffer: libbpf retries a failed load at level 1 into it.
        log_buf: log.as_mut_ptr().cast(),
        log_size: log.len() as u32,
        ..Default::default()
    };
    // Safety: every pointer is valid for the call: the name and license are NUL-terminated
    // C strings, `insns` holds `insns.len()` instructions of the kernel's 8-byte layout
    // (aya-obj's and libbpf's bpf_insn are both that repr(C) struct, size checked above),
    // and `opts.log_buf` points at `log_size` writable bytes that outlive the call.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_XDP,
            c_name.as_ptr(),
            license.as_ptr(),
            insns.as_ptr().cast(),
            insns.len() as _,
            &mut opts,
        )
    };
    if fd < 0 {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let log = String::from_utf8_lossy(&log[..end]).trim_end().to_string();
        return Err(SteerError::ProgLoad {
            source: std::io::Error::from_raw_os_error(-fd),
            log,
        });
    }
    // Safety: bpf_prog_load returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches `prog` to the interface `ifindex` through a BPF link (`BPF_XDP`), in the
/// driver or in generic mode. The program stays attached while the returned fd is open.
pub(crate) fn xdp_link(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    mode: XdpMode,
) -> Result<OwnedFd, std::io::Error> {
    let flags = match mode {
        XdpMode::Skb => libbpf_sys::XDP_FLAGS_SKB_MODE,
        _ => libbpf_sys::XDP_FLAGS_DRV_MODE,
    };
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        flags,
        ..Default::default()
    };
    // Safety: `prog` is an open program fd for the duration of the call and `opts` a valid,
    // sized options struct; bpf_link_create only reads them.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, libbpf_sys::BPF_XDP, &opts)
    };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // Safety: bpf_link_create returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An error with its sources, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya_obj::generated::bpf_insn;

    /// `BPF_EXIT` without setting r0 first: the verifier refuses it ("R0 !read_ok").
    fn exit_without_r0() -> Vec<bpf_insn> {
        vec![bpf_insn {
            code: 0x95, // BPF_JMP | BPF_EXIT
            _bitfield_align_1: [],
            _bitfield_1: bpf_insn::new_bitfield_1(0, 0),
            off: 0,
            imm: 0,
        }]
    }

    /// A refused program's error carries the verifier's log (as root), or says it was not
    /// allowed (without CAP_BPF): either way the error path runs and names the problem.
    #[test]
    fn bad_program_error_carries_the_verifier_log() {
        let license = CString::new("GPL").unwrap();
        let e = load_xdp("pfs_bad", &license, &exit_without_r0()).unwrap_err();
        let SteerError::ProgLoad { source, log } = &e else {
            panic!("expected ProgLoad, got {e}");
        };
        let msg = e.to_string();
        match source.raw_os_error() {
            Some(libc::EPERM) => {
                assert!(msg.contains("root or CAP_BPF"), "{msg}");
            }
            _ => {
                assert!(log.contains("R0 !read_ok"), "verifier log: {log:?}");
                assert!(msg.contains("R0 !read_ok"), "{msg}");
            }
        }
    }

    #[test]
    fn garbage_object_is_a_parse_error() {
        let e = match load(b"not an ELF object", "pfs_steer") {
            Err(e) => e,
            Ok(_) => panic!("garbage loaded"),
        };
        assert!(matches!(e, SteerError::Parse(_)), "{e}");
        assert!(e.to_string().contains("parsing the XDP object"), "{e}");
    }

    #[test]
    fn error_chain_joins_sources() {
        let inner = std::io::Error::other("inner");
        let outer = SteerError::CreateMap {
            name: "m".into(),
            source: aya::maps::MapError::IoError(inner),
        };
        assert!(
            error_chain(&outer).contains("inner"),
            "{}",
            error_chain(&outer)
        );
    }
}
