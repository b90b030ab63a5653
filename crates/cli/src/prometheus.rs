//! `tine --json metrics`: the daemon's Prometheus text as a JSON array of
//! samples, `{"name": …, "labels": {…}, "value": …}`, in the text's order.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, PartialEq, Serialize)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// A number; `"+Inf"`, `"-Inf"` or `"NaN"` as text (JSON has none).
    pub value: Value,
}

/// Parse the text exposition format (comments skipped, timestamps ignored).
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(sample(line).map_err(|e| format!("metrics line {}: {e}: {line}", i + 1))?);
    }
    Ok(out)
}

fn sample(line: &str) -> Result<Sample, String> {
    let end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let (name, mut rest) = line.split_at(end);
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = parse_labels(r, &mut labels)?;
    }
    let raw = rest.split_whitespace().next().ok_or("no value")?;
    let v: f64 = raw.parse().map_err(|_| "bad value")?;
    let value = if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).map_or_else(|| Value::from(raw), Value::Number)
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",…}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let (key, rest) = s.split_once("=\"").ok_or("bad label")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let after = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break &rest[i + 1..],
                (_, '\\') => match chars.next().ok_or("unterminated label value")?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        s = after.trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_labels_and_histogram_buckets_become_samples() {
        let text = "# HELP tine_forks_total Forks attempted.\n\
                    # TYPE tine_forks_total counter\n\
                    tine_forks_total 3\n\
                    tine_fork_seconds_bucket{stage=\"running\",le=\"+Inf\"} 2\n\
                    tine_fork_seconds_sum{stage=\"running\"} 0.073\n\
                    odd{msg=\"a \\\"q\\\", b\\\\\"} 1 1700000000\n";

        let s = parse(text).unwrap();

        assert_eq!(s.len(), 4);
        assert_eq!(
            (s[0].name.as_str(), &s[0].value),
            ("tine_forks_total", &Value::from(3))
        );
        assert!(s[0].labels.is_empty());
        assert_eq!(s[1].labels["stage"], "running");
        assert_eq!(s[1].labels["le"], "+Inf");
        assert_eq!(s[2].value, Value::from(0.073));
        assert_eq!(s[3].labels["msg"], "a \"q\", b\\");
        assert_eq!(s[3].value, Value::from(1));
    }

    #[test]
    fn infinities_stay_text_and_garbage_is_refused() {
        assert_eq!(parse("x +Inf").unwrap()[0].value, Value::from("+Inf"));
        assert!(parse("x{a=\"1\" 2").is_err());
        assert!(parse("x lots").is_err());
        assert!(parse("lonely").is_err());
    }
}
