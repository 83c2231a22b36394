//! Compiles every `src/bpf/*.bpf.c` with `clang -g -O2 -target bpf -c` into `OUT_DIR`.
//!
//! Headers come from the distribution: `<linux/bpf.h>` (linux-libc-dev, found through the
//! multiarch include directory) and `<bpf/bpf_helpers.h>` (libbpf-dev). Set `CLANG` to use
//! another compiler binary.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const APT_HINT: &str = "install them with: apt-get install clang llvm libbpf-dev linux-libc-dev";

fn multiarch_include(target_arch: &str) -> Option<&'static str> {
    Some(match target_arch {
        "x86_64" => "/usr/include/x86_64-linux-gnu",
        "aarch64" => "/usr/include/aarch64-linux-gnu",
        "riscv64" => "/usr/include/riscv64-linux-gnu",
        "s390x" => "/usr/include/s390x-linux-gnu",
        "powerpc64" => "/usr/include/powerpc64le-linux-gnu",
        _ => return None,
    })
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src_dir = manifest.join("src/bpf");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", src_dir.display());

    if Command::new(&clang).arg("--version").output().is_err() {
        panic!(
            "eni-bpf needs `{clang}` to compile its eBPF programs, and the headers \
             <linux/bpf.h> and <bpf/bpf_helpers.h>; {APT_HINT}"
        );
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        println!("cargo:warning=<bpf/bpf_helpers.h> not in /usr/include; {APT_HINT}");
    }

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", src_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();

    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let file = src.file_name().expect("file name").to_string_lossy();
        let obj = out_dir.join(file.replace(".bpf.c", ".bpf.o"));
        let mut cmd = Command::new(&clang);
        cmd.args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"]);
        if let Some(inc) = multiarch_include(&arch) {
            cmd.arg(format!("-I{inc}"));
        }
        cmd.arg("-c").arg(&src).arg("-o").arg(&obj);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {clang}: {e}; {APT_HINT}"));
        if !out.status.success() {
            panic!(
                "compiling {} failed ({APT_HINT} if a header is missing):\n{}",
                src.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
