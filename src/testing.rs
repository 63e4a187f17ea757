//! Support for tests that read the official implementation's reference outputs beside the repository.
//!
//! Those files live in `../shared/` relative to the crate root. A clone without them still passes its tests:
//! each test that needs one skips with a message naming the file, unless `TOPARCH_REQUIRE_SHARED=1` is set
//! (as CI sets it), in which case a missing file fails the test.

use std::io::Write;
use std::path::PathBuf;

/// The environment variable that turns a missing shared reference file from a skip into a failure.
pub const REQUIRE_SHARED: &str = "TOPARCH_REQUIRE_SHARED";

/// The path of `relative` under the shared reference folder, or `None` (after printing what `test` skips)
/// when it is absent. Panics when it is absent and [`REQUIRE_SHARED`] is `1`.
pub fn shared_file(relative: &str, test: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared").join(relative);
    if path.exists() {
        return Some(path);
    }
    if std::env::var(REQUIRE_SHARED).is_ok_and(|v| v == "1") {
        panic!("{test}: shared reference file {relative} is missing and {REQUIRE_SHARED}=1");
    }
    // Written to the process's stderr directly, not through `eprintln!`, which the test harness captures and
    // shows only for failing tests: a skip must be visible in a passing run.
    let _ =
        writeln!(std::io::stderr(), "SKIPPED {test}: shared reference file {relative} is not beside the repository");
    None
}
