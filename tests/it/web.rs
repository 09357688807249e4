//! The client library's own tests (node's test runner, fake WebRTC) and
//! its type check (tsc with checkJs; wsp.d.ts up to date), run from
//! `cargo test` so that one command runs everything.

use std::process::Command;

fn npm(args: &[&str]) {
    assert!(
        std::path::Path::new("node_modules/typescript").exists(),
        "node_modules is missing: run `npm ci` (tests/run.sh does it for you)"
    );
    let out = Command::new("npm")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run npm (install Node.js 20 or later): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "npm {} failed:\n{text}",
        args.join(" ")
    );
    println!("{text}");
}

#[test]
fn library_unit_tests() {
    npm(&["test", "--silent"]);
}

#[test]
fn library_type_check_and_declarations() {
    npm(&["run", "check", "--silent"]);
}
