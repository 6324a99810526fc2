//! `pfs keygen` and `pfs key pub`: identities and pre-shared keys (docs/security.md).

use clap::{Args, Subcommand};
use packetfs::secure::keys::{save_new_psk, Identity, KeyError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "\
Each host makes its own identity once; only public keys travel:
  receiver$ pfs keygen --out /etc/pfs/recv.key      # prints RECV_PUB
  sender$   pfs keygen --out ~/.pfs/send.key        # prints SEND_PUB
  receiver: add `SEND_PUB NAME [dir=SUBDIR] [max-file=SIZE] [max-session=SIZE]` to the
            --authorized-senders file
  sender:   pass --receiver-key RECV_PUB, or add `ADDRESS RECV_PUB` to the
            --known-receivers file
Optional pre-shared key (a second secret on top of the keys, same file on both hosts):
  pfs keygen --psk --out /etc/pfs/psk               # then --psk-file on both sides
See docs/security.md.
")]
pub struct KeygenArgs {
    /// Where to write the new key: a private key file (mode 0600) holding one base64 line.
    /// An existing file is never overwritten.
    #[arg(long)]
    out: PathBuf,
    /// Write a random 32-byte pre-shared key (for `--psk-file` on both sides) instead of an
    /// identity; nothing is printed on stdout.
    #[arg(long)]
    psk: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Print the public key of a private key file (one base64 line), e.g. to give it to a
    /// peer again. The file must not be readable by group or others.
    Pub {
        /// The private key file (`pfs keygen --out`).
        keyfile: PathBuf,
    },
}

/// `pfs keygen`.
pub fn keygen(a: KeygenArgs) -> anyhow::Result<ExitCode> {
    if a.psk {
        save_new_psk(&a.out).map_err(flat)?;
        eprintln!(
            "wrote a pre-shared key to {} (mode 0600): copy it to the peer over a channel you \
             trust and pass --psk-file {} on both sides",
            a.out.display(),
            a.out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let id = Identity::generate().map_err(flat)?;
    id.save_new(&a.out).map_err(flat)?;
    let public = id.public();
    println!("{public}");
    eprintln!(
        "wrote a private key to {} (mode 0600; keep it on this host). Its public key is on \
         stdout; give it to the peer:\n  \
         on a receiver, for this host as a sender (authorized-senders file): {public} {}\n  \
         on a sender, for this host as a receiver: --receiver-key {public}\n  \
         (or in the known-receivers file: ADDRESS {public})",
        a.out.display(),
        host_name()
    );
    Ok(ExitCode::SUCCESS)
}

/// `pfs key ...`.
pub fn key(c: KeyCmd) -> anyhow::Result<ExitCode> {
    match c {
        KeyCmd::Pub { keyfile } => {
            let id = Identity::load(&keyfile).map_err(flat)?;
            println!("{}", id.public());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// This host's name, for the suggested authorized-senders line (a name without spaces).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.split_whitespace().collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "NAME".into())
}

/// A key error as one line: its message already names the file and the cause (the chain
/// printed by `pfs: error: {:#}` would repeat the cause).
fn flat(e: KeyError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}
