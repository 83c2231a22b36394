//! The `eni-cni` binary: the container runtime executes it with `CNI_*` variables and the
//! netconf on stdin. Everything happens in [`eni_cni::main_with`]; this file only writes
//! its answer to stdout (the one place that does) and picks the exit code.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let var = |name: &str| std::env::var(name).ok();
    let (json, failed) = eni_cni::main_with(&var, &mut std::io::stdin().lock());
    if let Some(json) = json {
        let mut out = std::io::stdout().lock();
        let text = serde_json::to_string(&json).unwrap_or_default();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::from(1);
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
