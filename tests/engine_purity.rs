//! src/engine decides; it must never do I/O, read a clock or draw random numbers. This test reads
//! the engine's source and fails on anything that would let it.

use std::path::Path;

const FORBIDDEN: &[(&str, &str)] = &[
    ("kube::Client", "a kube client"),
    ("kube::Api", "a kube API handle"),
    ("kube::runtime", "the kube runtime"),
    ("tokio", "an async runtime"),
    ("reqwest", "an HTTP client"),
    ("hyper", "an HTTP client"),
    ("prometheus_http_query", "a Prometheus client"),
    ("std::fs", "file I/O"),
    ("std::net", "network I/O"),
    ("std::process", "processes"),
    ("std::env", "the environment"),
    ("std::thread", "threads"),
    ("SystemTime", "the system clock"),
    ("Instant::now", "the monotonic clock"),
    ("Timestamp::now", "the clock"),
    ("Utc::now", "the clock"),
    ("rand::", "randomness"),
    ("println!", "printing"),
    ("eprintln!", "printing"),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/engine exists") {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_engine_does_no_io_and_reads_no_clock() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine"),
        &mut files,
    );
    assert!(files.len() >= 5, "found only {files:?}");
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (needle, what) in FORBIDDEN {
                if code.contains(needle) {
                    violations.push(format!(
                        "{}:{}: {what} ({needle})",
                        file.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "src/engine must stay pure:\n{}",
        violations.join("\n")
    );
}
