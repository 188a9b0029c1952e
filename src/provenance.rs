//! Provenance of results on disk: what made a stored result, and whether it is still the
//! result the current spec asks for.
//!
//! A stored unit of work (a sweep task's records, a spirals run) carries its **inputs**:
//! a JSON object of everything its result depends on (spec fields, data, seeds, dtype,
//! the parametrization table, and [`FORMAT`], the version of reslim's record format and
//! training semantics), and their **fingerprint** ([`fingerprint`], a hash of the
//! inputs' canonical JSON). A resumed run recomputes the inputs of every unit from the
//! spec it was given; a stored unit whose fingerprint differs is *stale* and is never
//! used: the run names the fields that changed ([`changed_fields`]) and refuses, or
//! redoes it when told to. A unit whose fingerprint does not match its own inputs, or
//! whose file cannot be read, is *corrupt* and is redone.
//!
//! Fields that cannot change a result (the sweep's name, the report's options, the list
//! of other grid points) are left out of the inputs, so that extending a grid or
//! re-plotting reuses everything already computed.

use serde_json::Value;

/// The version of the stored record format and of the training semantics behind it. Bump
/// it whenever a change of reslim would change a stored result: every earlier result then
/// reads as stale.
pub const FORMAT: u32 = 2;

/// The fingerprint of `inputs`: 128-bit FNV-1a of their canonical JSON (object keys
/// sorted at every level; numbers as serde_json writes them, which round-trips f64), as
/// 32 hex digits. Stable across runs, machines and reslim versions. Not a cryptographic
/// hash: it detects edits, not forgeries.
pub fn fingerprint(inputs: &Value) -> String {
    let mut text = String::new();
    canonical(inputs, &mut text);
    hash_bytes(text.as_bytes())
}

/// 128-bit FNV-1a of `bytes`, as 32 hex digits (the hash of [`fingerprint`]; also for the
/// contents of data files a result depends on).
pub fn hash_bytes(bytes: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for &b in bytes {
        h ^= b as u128;
        h = h.wrapping_mul(PRIME);
    }
    format!("{h:032x}")
}

/// Writes `v` as JSON with the keys of every object sorted.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The changes of many stored results, each once, in order of first appearance, leaving
/// out those whose field (the part before `:`) `skip` selects.
pub fn union_of_changes<'a>(
    changes: impl IntoIterator<Item = &'a [String]>,
    skip: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in changes {
        for f in c {
            let field = f.split(':').next().unwrap_or(f);
            if !skip(field) && !out.contains(f) {
                out.push(f.clone());
            }
        }
    }
    out
}

/// The fields in which `new` differs from `old`, as `path: old -> new` (dotted paths
/// into nested objects; long values shortened), in key order.
pub fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", old, new, &mut out);
    out
}

fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    if let (Value::Object(a), Value::Object(b)) = (old, new) {
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            let missing = Value::String("(absent)".into());
            diff(
                &p,
                a.get(k).unwrap_or(&missing),
                b.get(k).unwrap_or(&missing),
                out,
            );
        }
    } else if old != new {
        let name = if path.is_empty() {
            "(whole record)"
        } else {
            path
        };
        out.push(format!("{name}: {} -> {}", short(old), short(new)));
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 48 {
        format!("{}...", s.chars().take(45).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_union_of_changes_keeps_each_once_in_order_and_skips_what_it_is_told() {
        let a = vec!["lr: 0.1 -> 0.2".to_string(), "task.L: 2 -> 4".to_string()];
        let b = vec!["seed: 1 -> 2".to_string(), "lr: 0.1 -> 0.2".to_string()];
        let u = union_of_changes([a.as_slice(), b.as_slice()], |f| f.starts_with("task"));
        assert_eq!(u, vec!["lr: 0.1 -> 0.2", "seed: 1 -> 2"]);
        let all = union_of_changes([a.as_slice(), b.as_slice()], |_| false);
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn the_fingerprint_ignores_key_order_and_sees_every_value() {
        let a = json!({"lr": 1.0, "data": {"N": 10, "seed": 1}, "read_steps": [9, 14]});
        let b = json!({"read_steps": [9, 14], "data": {"seed": 1, "N": 10}, "lr": 1.0});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 32);
        for changed in [
            json!({"lr": 0.5, "data": {"N": 10, "seed": 1}, "read_steps": [9, 14]}),
            json!({"lr": 1.0, "data": {"N": 10, "seed": 2}, "read_steps": [9, 14]}),
            json!({"lr": 1.0, "data": {"N": 10, "seed": 1}, "read_steps": [14]}),
            json!({"lr": 1.0, "data": {"N": 10, "seed": 1}, "read_steps": [14, 9]}),
            json!({"lr": 1.0000000000000002, "data": {"N": 10, "seed": 1}, "read_steps": [9, 14]}),
        ] {
            assert_ne!(fingerprint(&a), fingerprint(&changed), "{changed}");
        }
        // Pinned (computed independently, with Python): the fingerprint must not change
        // between versions of reslim, or every stored result would read as stale.
        assert_eq!(
            fingerprint(
                &serde_json::from_str::<Value>("{ \"b\": [1.5, \"x\"], \"a\" : 1 }").unwrap()
            ),
            "8eabb58138fac7e0b06c54641041d1a9"
        );
    }

    #[test]
    fn changed_fields_name_the_paths() {
        let old = json!({"lr": 1.0, "data": {"N": 10, "seed": 1}, "steps": 15});
        let new = json!({"lr": 0.5, "data": {"N": 10, "seed": 2}, "dtype": "f32", "steps": 15});
        assert_eq!(
            changed_fields(&old, &new),
            vec![
                "data.seed: 1 -> 2".to_string(),
                "dtype: \"(absent)\" -> \"f32\"".to_string(),
                "lr: 1.0 -> 0.5".to_string(),
            ]
        );
        assert!(changed_fields(&old, &old).is_empty());
    }
}
