//! Pull and unpack of the Debian test image from a loopback registry: nightshift's
//! `Store::pull` into an empty store against `skopeo copy docker://... oci:DIR` followed by
//! `umoci unpack` of the same image, alternating, over N runs; then the disk two images that
//! share the Debian base take in one store. Prints the median, the 10th and 90th percentiles,
//! and the minimum and maximum.
//!
//! `cargo bench -p nightshift-image --bench pull -- [--runs N]` (as root: umoci unpack keeps
//! ownership only as root, and the store shifts ids).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nightshift_image::{Owner, Reference, Store};

fn summary(name: &str, samples: &[Duration]) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<44} median {:>8.0} ms  p10 {:>8.0}  p90 {:>8.0}  min {:>8.0}  max {:>8.0}  (n={})",
        at(0.5),
        at(0.1),
        at(0.9),
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
}

fn runs(default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes of the files under `dir`, each inode counted once (as `du` does).
fn disk_bytes(dirs: &[&Path]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack: Vec<std::path::PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            if seen.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

#[tokio::main]
async fn main() {
    for tool in ["docker-registry", "skopeo", "umoci", "mmdebstrap"] {
        if !support::have(tool) {
            eprintln!("skipped: `{tool}` is not installed");
            return;
        }
    }
    let runs = runs(5);
    let work = support::workdir();
    let registry = support::Registry::start(None).unwrap();
    let base = support::debian_base().unwrap();
    let layout = work.path().join("layout");
    support::write_layout(&layout, "v1", std::slice::from_ref(&base), &[]);
    let pushed = registry.push(&layout, "v1", "test/debian", None).unwrap();
    println!(
        "image: Debian bookworm minbase, one layer of {:.1} MiB gzipped; {runs} runs each",
        base.size as f64 / (1 << 20) as f64
    );
    let reference = Reference::parse(&pushed).unwrap();
    let (options, _) = registry.options();

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut copy_only = Vec::new();
    for run_index in 0..runs {
        let store_dir = work.path().join(format!("store-{run_index}"));
        let started = Instant::now();
        let store = Store::open(&store_dir, Owner::Shift(100_000)).unwrap();
        store.pull(&reference, &options).await.unwrap();
        ours.push(started.elapsed());

        let oci = work.path().join(format!("oci-{run_index}"));
        let bundle = work.path().join(format!("bundle-{run_index}"));
        let started = Instant::now();
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{pushed}"))
            .arg(format!("oci:{}:v1", oci.display())));
        copy_only.push(started.elapsed());
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", oci.display()))
            .arg(&bundle));
        theirs.push(started.elapsed());

        let _ = std::fs::remove_dir_all(&oci);
        let _ = std::fs::remove_dir_all(&bundle);
        let store = Store::open(&store_dir, Owner::Shift(100_000)).unwrap();
        store.remove(&reference).unwrap();
        store.prune().unwrap();
    }
    summary("nightshift Store::pull (fetch + unpack)", &ours);
    summary("skopeo copy + umoci unpack", &theirs);
    summary("  of which skopeo copy alone", &copy_only);

    // Two images sharing the base in one store: the base is stored once.
    let extra = support::gzip_layer(work.path(), &support::extra_layer());
    support::write_layout(&layout, "v2", &[base.clone(), extra], &[]);
    let second = registry
        .push(&layout, "v2", "test/debian-extra", None)
        .unwrap();
    let store_dir = work.path().join("store-shared");
    let store = Store::open(&store_dir, Owner::Shift(100_000)).unwrap();
    let one = store.pull(&reference, &options).await.unwrap();
    let two = store
        .pull(&Reference::parse(&second).unwrap(), &options)
        .await
        .unwrap();
    let each: Vec<&Path> = one.layers.iter().map(|p| p.as_path()).collect();
    let both: Vec<&Path> = two.layers.iter().map(|p| p.as_path()).collect();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "disk: image 1 {:.1} MiB, image 2 {:.1} MiB, store's layers {:.1} MiB (base counted once)",
        mib(disk_bytes(&each)),
        mib(disk_bytes(&both)),
        mib(disk_bytes(&[&store_dir.join("layers")]))
    );
}
