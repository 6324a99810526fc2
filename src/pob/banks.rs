//! Synthetic bank generators. Each fills exactly `len` bytes from its own SplitMix64 stream;
//! nothing here depends on the platform (integers only, explicit little-endian).

use super::prng::SplitMix64;
use super::recipe::BankKind;

/// Generate a synthetic bank of `kind` into `out` (its whole length).
pub fn generate(kind: BankKind, rng: &mut SplitMix64, out: &mut [u8]) {
    let mut w = Writer { out, pos: 0 };
    match kind {
        BankKind::ElfText => elf_text(rng, &mut w),
        BankKind::DataMotifs => data_motifs(rng, &mut w),
        BankKind::PltGotReloc => plt_got_reloc(rng, &mut w),
        BankKind::SectionStrings => section_strings(rng, &mut w),
        BankKind::NumericTables => numeric_tables(rng, &mut w),
        BankKind::AsciiTables => ascii_tables(rng, &mut w),
        BankKind::Stripes => stripes(rng, &mut w),
        BankKind::Debruijn => debruijn(rng, &mut w),
        BankKind::ConstRuns => const_runs(rng, &mut w),
        BankKind::PrandTail | BankKind::Corpus => rng.fill(w.out),
    }
}

/// Appends into a fixed buffer; writes past the end are cut off.
struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn full(&self) -> bool {
        self.pos >= self.out.len()
    }
    fn put(&mut self, b: &[u8]) {
        let n = b.len().min(self.out.len() - self.pos);
        self.out[self.pos..self.pos + n].copy_from_slice(&b[..n]);
        self.pos += n;
    }
    fn byte(&mut self, b: u8) {
        if !self.full() {
            self.out[self.pos] = b;
            self.pos += 1;
        }
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    fn align(&mut self, to: usize, fill: &[u8]) {
        while self.pos % to != 0 && !self.full() {
            let gap = to - self.pos % to;
            // the longest multi-byte padding that fits
            let f = if fill.len() <= gap { fill } else { &fill[..1] };
            self.put(f);
        }
    }
}

// --- x86-64 code ---------------------------------------------------------------------------

const PROLOGUES: &[&[u8]] = &[
    &[0xf3, 0x0f, 0x1e, 0xfa],                                     // endbr64
    &[0x55, 0x48, 0x89, 0xe5],                                     // push rbp; mov rbp,rsp
    &[0x41, 0x57, 0x41, 0x56, 0x41, 0x55, 0x41, 0x54, 0x55, 0x53], // push r15..rbx
    &[0x41, 0x56, 0x41, 0x55, 0x41, 0x54, 0x55, 0x53],             // push r14..rbx
    &[0x41, 0x54, 0x55, 0x53],                                     // push r12; push rbp; push rbx
    &[0x53],                                                       // push rbx
    &[0x55, 0x53],                                                 // push rbp; push rbx
    &[0x41, 0x54],                                                 // push r12
];

const EPILOGUES: &[&[u8]] = &[
    &[0xc9, 0xc3], // leave; ret
    &[0x5d, 0xc3], // pop rbp; ret
    &[
        0x5b, 0x5d, 0x41, 0x5c, 0x41, 0x5d, 0x41, 0x5e, 0x41, 0x5f, 0xc3,
    ],
    &[0x5b, 0x5d, 0x41, 0x5c, 0xc3],
    &[0x5b, 0xc3],
    &[0x31, 0xc0, 0xc3],                   // xor eax,eax; ret
    &[0xb8, 0xff, 0xff, 0xff, 0xff, 0xc3], // mov eax,-1; ret
    &[0x48, 0x83, 0xc4, 0x08, 0xc3],       // add rsp,8; ret
    &[0x48, 0x83, 0xc4, 0x08, 0x5b, 0x5d, 0xc3],
    &[0x0f, 0x1f, 0x40, 0x00, 0xc3],
];

/// Multi-byte NOPs used for function alignment by GCC and LLVM.
const NOPS: &[&[u8]] = &[
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    &[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// Instruction templates: fixed bytes, then `imm` random bytes (displacements, immediates).
const INSNS: &[(&[u8], u8)] = &[
    (&[0x48, 0x89, 0xe5], 0),                                     // mov rbp,rsp
    (&[0x48, 0x89, 0xdf], 0),                                     // mov rdi,rbx
    (&[0x48, 0x89, 0xc7], 0),                                     // mov rdi,rax
    (&[0x48, 0x89, 0xc3], 0),                                     // mov rbx,rax
    (&[0x4c, 0x89, 0xe7], 0),                                     // mov rdi,r12
    (&[0x48, 0x89, 0xee], 0),                                     // mov rsi,rbp
    (&[0x89, 0xc7], 0),                                           // mov edi,eax
    (&[0x31, 0xc0], 0),                                           // xor eax,eax
    (&[0x31, 0xd2], 0),                                           // xor edx,edx
    (&[0x31, 0xf6], 0),                                           // xor esi,esi
    (&[0x85, 0xc0], 0),                                           // test eax,eax
    (&[0x48, 0x85, 0xc0], 0),                                     // test rax,rax
    (&[0x48, 0x85, 0xdb], 0),                                     // test rbx,rbx
    (&[0x84, 0xc0], 0),                                           // test al,al
    (&[0x74], 1),                                                 // je rel8
    (&[0x75], 1),                                                 // jne rel8
    (&[0xeb], 1),                                                 // jmp rel8
    (&[0x0f, 0x84], 4),                                           // je rel32
    (&[0x0f, 0x85], 4),                                           // jne rel32
    (&[0xe8], 4),                                                 // call rel32
    (&[0xe9], 4),                                                 // jmp rel32
    (&[0x48, 0x8b, 0x05], 4),                                     // mov rax,[rip+d32]
    (&[0x48, 0x8b, 0x3d], 4),                                     // mov rdi,[rip+d32]
    (&[0x8b, 0x05], 4),                                           // mov eax,[rip+d32]
    (&[0x48, 0x8d, 0x3d], 4),                                     // lea rdi,[rip+d32]
    (&[0x48, 0x8d, 0x35], 4),                                     // lea rsi,[rip+d32]
    (&[0x48, 0x8d, 0x05], 4),                                     // lea rax,[rip+d32]
    (&[0x48, 0x8b, 0x45], 1),                                     // mov rax,[rbp+d8]
    (&[0x89, 0x45], 1),                                           // mov [rbp+d8],eax
    (&[0x8b, 0x45], 1),                                           // mov eax,[rbp+d8]
    (&[0x48, 0x8b, 0x43], 1),                                     // mov rax,[rbx+d8]
    (&[0x48, 0x8b, 0x7b], 1),                                     // mov rdi,[rbx+d8]
    (&[0x48, 0x83, 0xec], 1),                                     // sub rsp,imm8
    (&[0x48, 0x83, 0xc4], 1),                                     // add rsp,imm8
    (&[0x48, 0x81, 0xec], 4),                                     // sub rsp,imm32
    (&[0x83, 0xf8], 1),                                           // cmp eax,imm8
    (&[0x83, 0xfb], 1),                                           // cmp ebx,imm8
    (&[0x3c], 1),                                                 // cmp al,imm8
    (&[0x48, 0x39, 0xc3], 0),                                     // cmp rbx,rax
    (&[0xbf], 4),                                                 // mov edi,imm32
    (&[0xbe], 4),                                                 // mov esi,imm32
    (&[0xba], 4),                                                 // mov edx,imm32
    (&[0xb8], 4),                                                 // mov eax,imm32
    (&[0xc7, 0x05], 8),                                           // mov dword [rip+d32],imm32
    (&[0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00], 0), // mov rax,fs:0x28
    (&[0x48, 0x89, 0x44, 0x24], 1),                               // mov [rsp+d8],rax
    (&[0x48, 0x8b, 0x44, 0x24], 1),                               // mov rax,[rsp+d8]
    (&[0x0f, 0xb6], 1),                                           // movzx r32,r/m8
    (&[0x48, 0x63], 1),                                           // movsxd
    (&[0xff, 0x24, 0xc5], 4),                                     // jmp [rax*8+d32]
    (&[0xc3], 0),                                                 // ret
    (&[0xe8], 4),
    (&[0xe8], 4),
];

fn elf_text(rng: &mut SplitMix64, w: &mut Writer) {
    while !w.full() {
        // a function: prologue(s), a body of instructions, an epilogue, 16-byte alignment
        if rng.below(4) != 0 {
            w.put(PROLOGUES[0]);
        }
        w.put(*rng.pick(&PROLOGUES[1..]));
        if rng.below(2) == 0 {
            w.put(&[0x48, 0x83, 0xec, (rng.below(16) as u8) * 8]);
        }
        let body = 4 + rng.below(40);
        for _ in 0..body {
            let (fixed, imm) = *rng.pick(INSNS);
            w.put(fixed);
            match imm {
                0 => {}
                1 => w.byte(small_disp(rng)),
                4 => w.u32(rel32(rng)),
                _ => {
                    w.u32(rel32(rng));
                    w.u32(rng.below(256) as u32);
                }
            }
        }
        w.put(*rng.pick(EPILOGUES));
        let pad = if rng.below(3) == 0 {
            &[0xcc][..]
        } else {
            *rng.pick(&NOPS[4..])
        };
        w.align(16, pad);
    }
}

/// Small stack displacements and field offsets: multiples of 8, or -8..-64 from rbp.
fn small_disp(rng: &mut SplitMix64) -> u8 {
    match rng.below(3) {
        0 => (rng.below(16) as u8) * 8,
        1 => 0u8.wrapping_sub((1 + rng.below(8) as u8) * 8),
        _ => rng.byte(),
    }
}

/// Call/jump displacements: mostly small in magnitude, either sign.
fn rel32(rng: &mut SplitMix64) -> u32 {
    let bits = 8 + rng.below(12);
    let mag = rng.below(1 << bits) as u32;
    if rng.below(2) == 0 {
        mag
    } else {
        mag.wrapping_neg()
    }
}

// --- data -----------------------------------------------------------------------------------

const FLOATS: &[u64] = &[
    0x3ff0000000000000, // 1.0
    0x3fe0000000000000, // 0.5
    0x4000000000000000, // 2.0
    0x4024000000000000, // 10.0
    0x4059000000000000, // 100.0
    0x408f400000000000, // 1000.0
    0x412e848000000000, // 1e6
    0x41cdcd6500000000, // 1e9
    0xbff0000000000000, // -1.0
    0x7ff0000000000000, // inf
    0x7ff8000000000000, // nan
    0x3f847ae147ae147b, // 0.01
];

fn data_motifs(rng: &mut SplitMix64, w: &mut Writer) {
    while !w.full() {
        let n = 4 + rng.below(60);
        match rng.below(6) {
            0 => {
                // pointers into a 4 MiB image above a typical base
                let base = [
                    0x0000_0000_0040_0000u64,
                    0x0000_0000_0000_0000,
                    0x0000_5555_5555_4000,
                ];
                let b = *rng.pick(&base);
                let mut p = b + (rng.below(1 << 22) & !7);
                for _ in 0..n {
                    w.u64(p);
                    p = p.wrapping_add(8 * (1 + rng.below(8)));
                }
            }
            1 => {
                for _ in 0..n {
                    let range = if rng.below(2) == 0 { 16 } else { 4096 };
                    w.u32(rng.below(range) as u32);
                }
            }
            2 => {
                for _ in 0..n {
                    w.u64(*rng.pick(FLOATS));
                }
            }
            3 => {
                // a jump table of negative rel32 entries, as in .rodata switch tables
                let mut v = (rng.below(1 << 20) as u32).wrapping_neg();
                for _ in 0..n {
                    w.u32(v);
                    v = v.wrapping_add(rng.below(256) as u32);
                }
            }
            4 => {
                // zero-filled structures with a few small fields
                for _ in 0..n {
                    let mut s = [0u8; 16];
                    s[rng.below(16) as usize] = rng.below(16) as u8;
                    w.put(&s);
                }
            }
            _ => {
                // (pointer, length) pairs and flag words
                for _ in 0..n {
                    w.u64(0x0040_0000 + (rng.below(1 << 20) & !7));
                    w.u64(rng.below(128));
                }
            }
        }
    }
}

fn plt_got_reloc(rng: &mut SplitMix64, w: &mut Writer) {
    while !w.full() {
        let n = 16 + rng.below(512) as u32;
        match rng.below(5) {
            0 => {
                // classic .plt: jmp *GOT(%rip); push $i; jmp .plt0
                let mut got = 0x2000 + rng.below(1 << 20) as u32;
                for i in 0..n {
                    w.put(&[0xff, 0x25]);
                    w.u32(got);
                    w.byte(0x68);
                    w.u32(i);
                    w.byte(0xe9);
                    w.u32((0u32.wrapping_sub(16)).wrapping_mul(i + 1));
                    got = got.wrapping_sub(16).wrapping_add(8);
                }
            }
            1 => {
                // .plt.sec: endbr64; bnd jmp *GOT(%rip); nopl
                let mut got = 0x2000 + rng.below(1 << 20) as u32;
                for _ in 0..n {
                    w.put(&[0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25]);
                    w.u32(got);
                    w.put(&[0x0f, 0x1f, 0x44, 0x00, 0x00]);
                    got = got.wrapping_sub(8);
                }
            }
            2 => {
                // .plt with endbr64 and push/bnd jmp
                for i in 0..n {
                    w.put(&[0xf3, 0x0f, 0x1e, 0xfa, 0x68]);
                    w.u32(i);
                    w.put(&[0xf2, 0xe9]);
                    w.u32((0u32.wrapping_sub(16)).wrapping_mul(i + 1));
                    w.byte(0x90);
                }
            }
            3 => {
                // GOT: addresses of PLT slots, step 16
                let mut a = 0x1000 + (rng.below(1 << 20) & !15);
                for _ in 0..n {
                    w.u64(a);
                    a += 16;
                }
            }
            _ => {
                // Elf64_Rela: R_X86_64_RELATIVE (8), GLOB_DAT (6), JUMP_SLOT (7)
                let mut off = 0x4000 + (rng.below(1 << 22) & !7);
                let ty = *rng.pick(&[8u64, 8, 6, 7]);
                let mut sym = 1 + rng.below(64);
                let mut addend = 0x1000 + rng.below(1 << 20);
                for _ in 0..n {
                    w.u64(off);
                    w.u64(if ty == 8 { 8 } else { (sym << 32) | ty });
                    w.u64(if ty == 8 { addend } else { 0 });
                    off += 8;
                    sym += 1;
                    addend += 8 * (1 + rng.below(32));
                }
            }
        }
    }
}

const SECTION_NAMES: &[&str] = &[
    ".interp",
    ".note.gnu.property",
    ".note.gnu.build-id",
    ".note.ABI-tag",
    ".gnu.hash",
    ".dynsym",
    ".dynstr",
    ".gnu.version",
    ".gnu.version_r",
    ".rela.dyn",
    ".rela.plt",
    ".init",
    ".plt",
    ".plt.got",
    ".plt.sec",
    ".text",
    ".fini",
    ".rodata",
    ".eh_frame_hdr",
    ".eh_frame",
    ".init_array",
    ".fini_array",
    ".data.rel.ro",
    ".dynamic",
    ".got",
    ".got.plt",
    ".data",
    ".bss",
    ".comment",
    ".gnu_debuglink",
    ".symtab",
    ".strtab",
    ".shstrtab",
    ".tbss",
    ".tdata",
    ".debug_info",
    ".debug_abbrev",
    ".debug_line",
    ".debug_str",
    ".debug_aranges",
];

const SYMBOLS: &[&str] = &[
    "__libc_start_main",
    "__cxa_finalize",
    "_ITM_deregisterTMCloneTable",
    "_ITM_registerTMCloneTable",
    "__gmon_start__",
    "__stack_chk_fail",
    "__errno_location",
    "malloc",
    "calloc",
    "realloc",
    "free",
    "strlen",
    "strcmp",
    "strncmp",
    "strcpy",
    "strncpy",
    "strchr",
    "strrchr",
    "strdup",
    "strerror",
    "memcpy",
    "memmove",
    "memset",
    "memcmp",
    "printf",
    "fprintf",
    "sprintf",
    "snprintf",
    "vfprintf",
    "fputs",
    "fputc",
    "fwrite",
    "fflush",
    "fopen",
    "fclose",
    "open",
    "close",
    "read",
    "write",
    "lseek",
    "stat",
    "fstat",
    "getenv",
    "setenv",
    "exit",
    "_exit",
    "abort",
    "signal",
    "sigaction",
    "sigprocmask",
    "fork",
    "execve",
    "waitpid",
    "pipe",
    "dup2",
    "getpid",
    "kill",
    "isatty",
    "ioctl",
    "setlocale",
    "nl_langinfo",
    "gettext",
    "dcgettext",
    "qsort",
    "bsearch",
    "strtol",
    "strtoul",
    "strtoimax",
    "time",
    "localtime",
    "strftime",
    "gettimeofday",
    "opendir",
    "readdir",
    "closedir",
    "getcwd",
    "chdir",
    "tcgetattr",
    "tcsetattr",
    "getpwnam",
    "pthread_create",
    "pthread_mutex_lock",
    "pthread_mutex_unlock",
    "__cxa_atexit",
    "__ctype_b_loc",
    "__ctype_toupper_loc",
    "__ctype_tolower_loc",
    "mbrtowc",
    "wcwidth",
    "libc.so.6",
    "libtinfo.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "ld-linux-x86-64.so.2",
    "/lib64/ld-linux-x86-64.so.2",
    "GLIBC_2.2.5",
    "GLIBC_2.3",
    "GLIBC_2.3.4",
    "GLIBC_2.4",
    "GLIBC_2.14",
    "GLIBC_2.17",
    "GLIBC_2.33",
    "GLIBC_2.34",
    "GLIBC_2.38",
    "GCC_3.0",
    "GCC: (Debian 12.2.0-14) 12.2.0",
    "GCC: (GNU) 13.2.0",
    "crtstuff.c",
    "deregister_tm_clones",
    "__do_global_dtors_aux",
    "frame_dummy",
    "_DYNAMIC",
    "_GLOBAL_OFFSET_TABLE_",
    "__GNU_EH_FRAME_HDR",
    "_init",
    "_fini",
    "_start",
    "main",
    "__dso_handle",
    "__TMC_END__",
    "__bss_start",
    "_edata",
    "_end",
    "_IO_stdin_used",
    "stdin",
    "stdout",
    "stderr",
    "environ",
    "optarg",
    "optind",
];

fn section_strings(rng: &mut SplitMix64, w: &mut Writer) {
    while !w.full() {
        // a string table: a run of names from one list, NUL-separated, in random order
        let list: &[&str] = if rng.below(3) == 0 {
            SECTION_NAMES
        } else {
            SYMBOLS
        };
        let n = 8 + rng.below(64);
        for _ in 0..n {
            w.put(rng.pick(list).as_bytes());
            w.byte(0);
        }
    }
}

fn numeric_tables(rng: &mut SplitMix64, w: &mut Writer) {
    while !w.full() {
        let width = *rng.pick(&[1usize, 2, 4, 8]);
        let stride = *rng.pick(&[1u64, 1, 1, 2, 4, 8, 16, 24, 32, 64, 0x100, 0x1000]);
        let mut v = if rng.below(2) == 0 {
            0
        } else {
            rng.below(1 << 16)
        };
        let n = 64 + rng.below(1024);
        for _ in 0..n {
            w.put(&v.to_le_bytes()[..width]);
            v = v.wrapping_add(stride);
        }
    }
}

const ASCII_PIECES: &[&str] = &[
    "0123456789",
    "0123456789abcdef",
    "0123456789ABCDEF",
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~",
    "No such file or directory", "Permission denied", "Invalid argument", "Out of memory",
    "%s: %s\n", "%s: %s: %s\n", "%d", "%ld", "%lu", "%zu", "%s", "%c", "0x%lx", "%s=%s",
    "usage: ", "Usage: %s [OPTION]... [FILE]...\n", "Try '%s --help' for more information.\n",
    "invalid option", "option requires an argument", "cannot open", "cannot allocate memory",
    "syntax error", "unexpected end of file", "command not found", "not found", "error",
    "warning: ", "fatal: ", "true", "false", "null", "none", "default", "version", "help",
    "/usr/bin", "/usr/lib", "/usr/share", "/etc/", "/dev/null", "/tmp", "/bin/sh", "HOME",
    "PATH", "LANG", "LC_ALL", "TERM", "SHELL", "USER", "PWD", "http://", "https://",
    "the ", "and ", "of ", "to ", "in ", "is ", "for ", "with ", "that ", "this ", "not ",
    "{\"", "\":", "\",\"", "\"}", "[\"", "\"]", "\n", "\t", "  ", "    ", "\r\n",
];

fn ascii_tables(rng: &mut SplitMix64, w: &mut Writer) {
    while !w.full() {
        let n = 4 + rng.below(32);
        for _ in 0..n {
            w.put(rng.pick(ASCII_PIECES).as_bytes());
            match rng.below(4) {
                0 => w.byte(0),
                1 => w.byte(b' '),
                2 => w.byte(b'\n'),
                _ => {}
            }
        }
    }
}

fn stripes(rng: &mut SplitMix64, w: &mut Writer) {
    let mut motif = [0u8; 64];
    while !w.full() {
        let period = 2 + rng.below(63) as usize;
        for m in motif[..period].iter_mut() {
            // stripes of mostly small or common byte values
            *m = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => rng.below(16) as u8,
                _ => rng.byte(),
            };
        }
        let reps = 8 + rng.below(120);
        for _ in 0..reps {
            w.put(&motif[..period]);
        }
    }
}

/// Alphabets of common bytes for de Bruijn tiles.
const DB_ALPHABETS: &[[u8; 4]] = &[
    [0x00, 0xff, 0x01, 0x48],
    [0x00, 0x01, 0x02, 0x03],
    [0x00, 0x20, 0x0a, 0x30],
    [0x00, 0x08, 0x10, 0x40],
    [0x00, 0xff, 0x80, 0x7f],
    [0x41, 0x43, 0x47, 0x54],
    [0x30, 0x31, 0x20, 0x0a],
    [0x00, 0x89, 0x8b, 0x48],
];

fn debruijn(rng: &mut SplitMix64, w: &mut Writer) {
    // B(4, 8): every 8-symbol word over a 4-letter alphabet once, 65536 symbols per tile,
    // built with the standard Lyndon-word (FKM) algorithm.
    let mut seq = Vec::with_capacity(1 << 16);
    debruijn_seq(4, 8, &mut seq);
    while !w.full() {
        let a = rng.pick(DB_ALPHABETS);
        for s in &seq {
            w.byte(a[*s as usize]);
        }
    }
}

fn debruijn_seq(k: u8, n: usize, out: &mut Vec<u8>) {
    fn db(t: usize, p: usize, k: u8, n: usize, a: &mut [u8], out: &mut Vec<u8>) {
        if t > n {
            if n % p == 0 {
                out.extend_from_slice(&a[1..=p]);
            }
        } else {
            a[t] = a[t - p];
            db(t + 1, p, k, n, a, out);
            for j in (a[t - p] + 1)..k {
                a[t] = j;
                db(t + 1, t, k, n, a, out);
            }
        }
    }
    let mut a = vec![0u8; n + 1];
    db(1, 1, k, n, &mut a, out);
}

fn const_runs(rng: &mut SplitMix64, w: &mut Writer) {
    // the most common fill values get long runs first, then every byte value a shorter run
    for v in [0x00u8, 0xff, 0xcc, 0x90, 0x20] {
        for _ in 0..16 * 1024 {
            w.byte(v);
        }
    }
    while !w.full() {
        let v = rng.byte();
        let n = 64 + rng.below(1024);
        for _ in 0..n {
            w.byte(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debruijn_contains_every_word_once() {
        let mut s = Vec::new();
        debruijn_seq(4, 4, &mut s);
        assert_eq!(s.len(), 256);
        let mut seen = std::collections::HashSet::new();
        for i in 0..s.len() {
            let w: Vec<u8> = (0..4).map(|j| s[(i + j) % s.len()]).collect();
            assert!(seen.insert(w));
        }
    }

    #[test]
    fn every_kind_fills_its_length_deterministically() {
        use BankKind::*;
        for kind in [
            ElfText,
            DataMotifs,
            PltGotReloc,
            SectionStrings,
            NumericTables,
            AsciiTables,
            Stripes,
            Debruijn,
            ConstRuns,
            PrandTail,
        ] {
            for len in [0usize, 1, 4097, 70_000] {
                let mut a = vec![0xAAu8; len];
                let mut b = vec![0x55u8; len];
                generate(kind, &mut SplitMix64::new(3), &mut a);
                generate(kind, &mut SplitMix64::new(3), &mut b);
                assert_eq!(a, b, "{kind:?} {len}");
            }
        }
    }
}
