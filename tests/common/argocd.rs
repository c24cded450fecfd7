//! Argo CD's own Lua health checks for `argoproj.io/Rollout` and `flagger.app/Canary`, fetched at
//! a pinned version and run the way Argo CD runs them, so tests can show the health Argo CD
//! would display for any object Sluice writes.
//!
//! The scripts (with Argo CD's own `health_test.yaml` and `testdata/`) come from the module zip of
//! `github.com/argoproj/argo-cd/v3` at [`ARGOCD_VERSION`] through the Go module proxy (the first
//! entry of `GOPROXY`, else `go env GOPROXY`), fetched once with `curl` and unpacked with `unzip`
//! into `~/.cache/sluice/argocd-<version>/` (`SLUICE_ARGOCD_CACHE` overrides the root). Without
//! network access and without that cache, loading fails with a message saying so: never skipped.
//!
//! The runner mirrors Argo CD's `util/lua` (gopher-lua, Lua 5.1): only the base, table and
//! package libraries are open; the object is the global `obj`, converted as Argo CD's
//! `decodeValue` does (JSON numbers are Lua numbers, arrays 1-based tables, `null` is `nil`); a
//! returned table is read as `{status, message}`, a status outside Argo CD's health codes becomes
//! `Unknown`. Argo CD's "safe os" library and its 1 s script timeout are not reproduced: neither
//! script uses `os`, and both finish at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use mlua::{Lua, LuaOptions, StdLib};
use serde_json::Value;

/// The Argo CD release whose health scripts are run.
pub const ARGOCD_VERSION: &str = "v3.6.2";

/// The module path of Argo CD v3 (its zip holds `resource_customizations/`).
const MODULE: &str = "github.com/argoproj/argo-cd/v3";

/// Kinds whose scripts are fetched, as `<group>/<Kind>` under `resource_customizations/`.
pub const KINDS: [&str; 2] = ["argoproj.io/Rollout", "flagger.app/Canary"];

/// The health codes Argo CD accepts from a script (`isValidHealthStatusCode`).
const HEALTH_CODES: [&str; 6] = [
    "Unknown",
    "Progressing",
    "Healthy",
    "Suspended",
    "Degraded",
    "Missing",
];

/// What Argo CD shows for an object: its health status and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgoHealth {
    pub status: String,
    pub message: String,
}

/// The directory of one kind's `health.lua`, `health_test.yaml` and `testdata/`, e.g.
/// `resource_customizations("argoproj.io/Rollout")`. Fetches the scripts on first use.
pub fn resource_customizations(kind: &str) -> PathBuf {
    scripts_root().join(kind)
}

/// `<cache>/argocd-<version>/resource_customizations`, fetched if not there yet.
fn scripts_root() -> PathBuf {
    // One download per test process; other processes are handled by the atomic rename.
    static FETCH: Mutex<()> = Mutex::new(());
    let cache = cache_dir();
    let _once = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if !cache.join(".complete").exists() {
        fetch_into(&cache);
    }
    cache.join("resource_customizations")
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("SLUICE_ARGOCD_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sluice")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice")))
        .expect("HOME is set (the Argo CD scripts are cached under ~/.cache/sluice)");
    base.join(format!("argocd-{ARGOCD_VERSION}"))
}

/// The first module proxy of `GOPROXY` (or `go env GOPROXY`), as Go would ask it.
fn module_proxy() -> String {
    let from_go = || {
        let go = std::env::var_os("GO").unwrap_or_else(|| "/usr/local/go/bin/go".into());
        Command::new(go)
            .args(["env", "GOPROXY"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let list = std::env::var("GOPROXY")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(from_go)
        .unwrap_or_default();
    list.split([',', '|'])
        .map(str::trim)
        .find(|p| p.starts_with("http"))
        .unwrap_or("https://proxy.golang.org")
        .trim_end_matches('/')
        .to_string()
}

/// Downloads the module zip and unpacks the wanted scripts into `cache`, atomically (a temporary
/// directory renamed into place), so tests running at the same time never see half a cache.
fn fetch_into(cache: &Path) {
    let url = format!("{}/{MODULE}/@v/{ARGOCD_VERSION}.zip", module_proxy());
    let parent = cache.parent().expect("the cache has a parent");
    std::fs::create_dir_all(parent)
        .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    let tmp = parent.join(format!(
        ".argocd-{ARGOCD_VERSION}.{}.tmp",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("creating {}: {e}", tmp.display()));
    let _cleanup = RemoveOnDrop(tmp.clone());
    let zip = tmp.join("module.zip");
    run(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "--max-time", "300", "-o"])
            .arg(&zip)
            .arg(&url),
        &format!(
            "downloading Argo CD {ARGOCD_VERSION}'s module from {url} (needs network access to \
             the Go module proxy once; the scripts are then cached in {})",
            cache.display()
        ),
    );
    let prefix = format!("{MODULE}@{ARGOCD_VERSION}/resource_customizations");
    let patterns: Vec<String> = KINDS
        .iter()
        .flat_map(|k| {
            [
                format!("{prefix}/{k}/health.lua"),
                format!("{prefix}/{k}/health_test.yaml"),
                format!("{prefix}/{k}/testdata/*"),
            ]
        })
        .collect();
    run(
        Command::new("unzip")
            .arg("-q")
            .arg(&zip)
            .args(&patterns)
            .arg("-d")
            .arg(&tmp),
        &format!("unpacking the health scripts from {}", zip.display()),
    );
    let unpacked = tmp.join(&prefix);
    let staged = tmp.join("staged");
    std::fs::create_dir_all(&staged).expect("creating the staging directory");
    std::fs::rename(&unpacked, staged.join("resource_customizations"))
        .unwrap_or_else(|e| panic!("moving {}: {e}", unpacked.display()));
    std::fs::write(staged.join(".complete"), format!("{url}\n")).expect("marking the cache");
    // Another test may have filled the cache meanwhile: then its copy is as good as ours.
    if std::fs::rename(&staged, cache).is_err() && !cache.join(".complete").exists() {
        panic!(
            "could not move the Argo CD scripts into {}",
            cache.display()
        );
    }
}

/// Removes a temporary directory when dropped, also when a step panics (no 50 MB leftovers).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command, what: &str) {
    match command.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("{what}: cannot run {:?}: {e}", command.get_program()),
    }
}

/// One kind's `health.lua`, ready to run on objects.
pub struct HealthScript {
    name: String,
    source: String,
}

impl HealthScript {
    /// The health script of `kind` (`argoproj.io/Rollout` or `flagger.app/Canary`).
    pub fn of(kind: &str) -> HealthScript {
        let path = resource_customizations(kind).join("health.lua");
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        HealthScript {
            name: format!("argocd-{ARGOCD_VERSION}/{kind}/health.lua"),
            source,
        }
    }

    /// The health Argo CD computes for `object` (a whole object: metadata, spec, status), or
    /// the script's error (Argo CD then shows the resource's health as unknown, with the error).
    pub fn health(&self, object: &Value) -> Result<ArgoHealth, String> {
        self.run(object).map_err(|e| format!("{}: {e}", self.name))
    }

    fn run(&self, object: &Value) -> mlua::Result<ArgoHealth> {
        let lua = Lua::new_with(StdLib::TABLE | StdLib::PACKAGE, LuaOptions::default())?;
        lua.globals().set("obj", to_lua(&lua, object)?)?;
        let returned: mlua::Value = lua.load(&self.source).set_name(&self.name).eval()?;
        match returned {
            mlua::Value::Table(t) => {
                let field = |key: &str| -> mlua::Result<String> {
                    match t.get::<mlua::Value>(key)? {
                        mlua::Value::Nil => Ok(String::new()),
                        mlua::Value::String(s) => Ok(s.to_str()?.to_string()),
                        other => Err(mlua::Error::runtime(format!(
                            "{key} is a {}, not a string",
                            other.type_name()
                        ))),
                    }
                };
                let (status, message) = (field("status")?, field("message")?);
                if HEALTH_CODES.contains(&status.as_str()) {
                    Ok(ArgoHealth { status, message })
                } else {
                    Ok(ArgoHealth {
                        status: "Unknown".into(),
                        message: "Lua returned an invalid health status".into(),
                    })
                }
            }
            mlua::Value::Nil => Ok(ArgoHealth {
                status: String::new(),
                message: String::new(),
            }),
            other => Err(mlua::Error::runtime(format!(
                "expect table output from health.lua, got {}",
                other.type_name()
            ))),
        }
    }
}

/// JSON to Lua as Argo CD's `decodeValue`: numbers are Lua numbers, arrays 1-based tables.
fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<mlua::Value> {
    Ok(match value {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => mlua::Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => mlua::Value::String(lua.create_string(s)?),
        Value::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            mlua::Value::Table(table)
        }
        Value::Object(fields) => {
            let table = lua.create_table_with_capacity(0, fields.len())?;
            for (key, item) in fields {
                table.raw_set(key.as_str(), to_lua(lua, item)?)?;
            }
            mlua::Value::Table(table)
        }
    })
}

/// One case of Argo CD's `health_test.yaml`: the object file and the health Argo CD expects.
#[derive(Debug)]
pub struct HealthCase {
    pub input: PathBuf,
    pub expected: ArgoHealth,
}

/// The cases of `kind`'s `health_test.yaml`, Argo CD's own expectations for its script.
pub fn health_cases(kind: &str) -> Vec<HealthCase> {
    let dir = resource_customizations(kind);
    let path = dir.join("health_test.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let text_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
    doc["tests"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no tests", path.display()))
        .iter()
        .map(|case| HealthCase {
            input: dir.join(text_of(&case["inputPath"])),
            expected: ArgoHealth {
                status: text_of(&case["healthStatus"]["status"]),
                message: text_of(&case["healthStatus"]["message"]),
            },
        })
        .collect()
}

/// A YAML object file as JSON (what Argo CD's tests load into an `Unstructured`).
pub fn read_object(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}
