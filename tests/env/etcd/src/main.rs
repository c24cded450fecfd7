//! Prints the path of the etcd binary vendored by the `etcd-bin-vendored-*` crate for this platform.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
use etcd_bin_vendored_linux_amd64 as vendored;
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
use etcd_bin_vendored_linux_arm64 as vendored;

fn main() {
    println!(
        "{}",
        vendored::etcd_bin_path()
            .expect("etcd binary for this platform")
            .display()
    );
}
