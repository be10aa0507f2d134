//! The Prometheus text exposition format (0.0.4), read strictly: the one parser of the
//! tests, for the daemon's `/metrics`.

use std::collections::HashMap;

/// `name{labels}` -> value for every sample of `text`. Panics on a sample without a
/// `# TYPE` line, a value that is not a number, or a `_total` that is not a counter (and
/// the other way round).
pub fn parse(text: &str) -> HashMap<String, f64> {
    let mut values = HashMap::new();
    let mut typed = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line:?}"));
        let family = name.split('{').next().unwrap_or(name);
        assert!(
            typed.contains_key(family),
            "{name} has no # TYPE line:\n{text}"
        );
        values.insert(name.to_owned(), value);
    }
    for (name, kind) in &typed {
        let want = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(kind, want, "{name}");
    }
    values
}
