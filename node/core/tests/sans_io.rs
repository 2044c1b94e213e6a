//! The core is sans-IO: it depends on no async runtime, network, storage or RPC
//! crate, and its source reads no clock, spawns nothing and uses no HashMap.

use std::path::Path;

const FORBIDDEN_CRATES: [&str; 6] = ["tokio", "quinn", "rocksdb", "tonic", "rand", "mio"];
const FORBIDDEN_SOURCE: [&str; 8] = [
    "tokio",
    "quinn",
    "rocksdb",
    "tonic",
    "std::time",
    "std::thread",
    "std::fs",
    "HashMap",
];

#[test]
fn core_depends_on_no_io_crate() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("manifest");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] table");
    for line in deps.lines().take_while(|l| !l.starts_with('[')) {
        let name = line
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_end_matches(".workspace");
        assert!(
            !FORBIDDEN_CRATES.contains(&name),
            "meridian-core depends on {name}"
        );
    }
}

#[test]
fn core_source_does_no_io() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = 0;
    // Every source file, in module folders too.
    let mut paths = Vec::new();
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                paths.push(path);
            }
        }
    }
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("source");
        files += 1;
        assert!(
            text.starts_with("//!"),
            "{} lacks a //! header saying what it owns",
            path.display()
        );
        for word in FORBIDDEN_SOURCE {
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                assert!(
                    !code.contains(word),
                    "{}:{}: {word} in the core",
                    path.display(),
                    i + 1
                );
            }
        }
    }
    assert!(files >= 8, "found the core's sources");
}
