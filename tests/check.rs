//! `toparch check`: the repository budgets pass, a tight budget fails with exit 1, a malformed file exits 2.

use std::path::PathBuf;
use std::process::{Command, Output};

fn check(budgets: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_toparch")).args(["check", "--budgets", budgets]).args(extra).output().unwrap()
}

fn write_budgets(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toparch-check-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("budgets.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn repository_budgets_pass() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("specs/budgets.toml");
    let out = check(path.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("topformer-base@512x512 paper") && text.contains("1,813,471,232"), "{text}");
    assert!(!text.contains("OVER"));
}

#[test]
fn tight_budget_fails_naming_entry_stage_and_excess() {
    let path = write_budgets(
        "tight",
        "[[budget]]\nspec = \"topformer-small\"\nres = \"512\"\nmax_flops = 1.2e9\n\n\
         [budget.stages.semantics_extractor]\nmax_flops = 1.0e8\n",
    );
    let out = check(path.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("topformer-small@512x512 paper semantics_extractor flops is 135,884,800, over the budget 100,000,000 by 35,884,800"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "only the stage is over: {err}");
    let json = check(path.to_str().unwrap(), &["--format", "json"]);
    let verdicts: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(verdicts[0]["ok"], true);
    assert_eq!(verdicts[1]["scope"], "semantics_extractor");
    assert_eq!(verdicts[1]["actual"], 135_884_800);
    assert_eq!(verdicts[1]["ok"], false);
}

#[test]
fn a_budget_may_name_a_spec_file_beside_it() {
    let path = write_budgets("file", "[[budget]]\nspec = \"mine\"\nres = \"64\"\nmax_params = 1.0\n");
    std::fs::write(path.with_file_name("mine.toml"), "extends = \"topformer-tiny\"\n").unwrap();
    let out = check(path.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mine@64x64 paper total params"));
}

#[test]
fn tolerance_widens_every_limit_of_an_entry() {
    let text = "[[budget]]\nspec = \"topformer-base\"\nres = \"512\"\nmax_flops = 1.8e9\ntolerance = 0.01\n";
    let out = check(write_budgets("tolerance", text).to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(0), "1.813 G is within 1.8 G + 1 %");
    let strict = check(write_budgets("strict", &text.replace("tolerance = 0.01\n", "")).to_str().unwrap(), &[]);
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn malformed_budgets_exit_2_with_file_and_line() {
    for (test, text, needle) in [
        ("syntax", "[[budget]]\nspec = \"topformer-tiny\"\nres = \n", ":3"),
        ("unknown-key", "[[budget]]\nspec = \"topformer-tiny\"\nres = \"512\"\nmax_flop = 1e9\n", ":4"),
        (
            "stage",
            "[[budget]]\nspec = \"topformer-tiny\"\nres = \"512\"\n[budget.stages.neck]\nmax_flops = 1.0\n",
            "no stage 'neck'",
        ),
        ("negative", "[[budget]]\nspec = \"topformer-tiny\"\nres = \"512\"\nmax_flops = -1.0\n", "non-negative"),
        ("spec", "[[budget]]\nspec = \"topformer-huge\"\nres = \"512\"\nmax_flops = 1e9\n", "unknown variant"),
        ("no-limit", "[[budget]]\nspec = \"topformer-tiny\"\nres = \"512\"\n", "sets no limit"),
        ("empty", "budget = []\n", "no [[budget]] entry"),
    ] {
        let path = write_budgets(test, text);
        let out = check(path.to_str().unwrap(), &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{test}: {err}");
        assert!(err.contains(needle), "{test}: {err}");
        assert!(err.contains("budgets.toml:"), "{test}: names the budgets file: {err}");
    }
    assert_eq!(check("no/such/budgets.toml", &[]).status.code(), Some(2));
}
