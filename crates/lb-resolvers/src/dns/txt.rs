//! Service configs in DNS (gRFC A2): a TXT record of `_grpc_config.<host>` whose
//! text is `grpc_config=` and a JSON list of choices, the first choice that matches
//! this client giving the service config.
//!
//! ```
//! use lb_resolvers::dns::{Client, choose_service_config};
//!
//! let record = r#"grpc_config=[
//!     {"clientLanguage": ["go"], "serviceConfig": {"loadBalancingPolicy": "pick_first"}},
//!     {"percentage": 100, "serviceConfig": {"loadBalancingPolicy": "round_robin"}}]"#;
//! let client = Client::new(Some("host-1".into()));
//! let chosen = choose_service_config(record.strip_prefix("grpc_config=").unwrap(), &client, || 50)
//!     .unwrap();
//! assert_eq!(chosen.as_deref(), Some(r#"{"loadBalancingPolicy":"round_robin"}"#));
//! ```

use serde_json::{Map, Value};

/// The attribute a TXT record's text starts with (RFC 1464).
pub const GRPC_CONFIG_ATTRIBUTE: &str = "grpc_config=";

/// The prefix of the name whose TXT records carry the service config.
pub const GRPC_CONFIG_PREFIX: &str = "_grpc_config.";

/// The language `clientLanguage` lists are matched against (case-insensitively).
pub const CLIENT_LANGUAGE: &str = "rust";

/// What a choice's criteria are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's host name, for `clientHostname` (exact, case-sensitive); `None`
    /// when unknown: a choice that names hosts then never matches.
    pub hostname: Option<String>,
}

impl Client {
    /// A client on `hostname`.
    pub fn new(hostname: Option<String>) -> Self {
        Self { hostname }
    }

    /// This machine: the host name the kernel reports.
    pub fn this_host() -> Self {
        let hostname = ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty());
        Self { hostname }
    }
}

/// Why a `grpc_config` record was rejected: where, and what is wrong there. The
/// whole record is then invalid (gRFC A2), and the channel keeps its previous
/// service config (A21).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid grpc_config TXT record at `{path}`: {reason}")]
pub struct TxtConfigError {
    /// A JSON path into the record's list, such as `[0].percentage`.
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

fn error(path: impl Into<String>, reason: impl Into<String>) -> TxtConfigError {
    TxtConfigError {
        path: path.into(),
        reason: reason.into(),
    }
}

/// The text of the `grpc_config` record among a name's TXT records (each given as
/// its strings, which are joined, RFC 4408 section 3.1.3), without the attribute:
/// the first record whose text starts with `grpc_config=`. Other records (SPF and
/// the like) are left alone.
pub fn find_grpc_config<S: AsRef<[u8]>>(records: &[Vec<S>]) -> Option<String> {
    records.iter().find_map(|strings| {
        let joined: Vec<u8> = strings
            .iter()
            .flat_map(|s| s.as_ref().iter().copied())
            .collect();
        let text = String::from_utf8_lossy(&joined);
        text.strip_prefix(GRPC_CONFIG_ATTRIBUTE).map(str::to_owned)
    })
}

/// The service config (as JSON) that `value`, the JSON list of choices after
/// `grpc_config=`, gives `client`: that of the first choice whose criteria all
/// match, or `None` when none does. `percent` draws a number from 1 to 100 for
/// `percentage` criteria (a choice with `percentage` p matches when the draw is at
/// most p).
///
/// Every choice is checked, as gRFC A2 asks: a field this version does not know, a
/// `clientLanguage` or `clientHostname` that is not a list of strings, a
/// `percentage` that is not an integer from 0 to 100, or a `serviceConfig` that is
/// missing or not an object makes the whole record invalid.
pub fn choose_service_config(
    value: &str,
    client: &Client,
    mut percent: impl FnMut() -> u32,
) -> Result<Option<String>, TxtConfigError> {
    let parsed: Value =
        serde_json::from_str(value).map_err(|e| error("$", format!("not JSON: {e}")))?;
    let choices = parsed
        .as_array()
        .ok_or_else(|| error("$", "expected a JSON list of service config choices"))?;
    let mut chosen = None;
    for (i, choice) in choices.iter().enumerate() {
        let path = format!("[{i}]");
        let choice = choice
            .as_object()
            .ok_or_else(|| error(&path, "expected an object"))?;
        let matches = check_choice(choice, &path, client, &mut percent)?;
        if matches && chosen.is_none() {
            chosen = choice.get("serviceConfig").map(Value::to_string);
        }
    }
    Ok(chosen)
}

/// Checks one choice; whether it matches `client`.
fn check_choice(
    choice: &Map<String, Value>,
    path: &str,
    client: &Client,
    percent: &mut impl FnMut() -> u32,
) -> Result<bool, TxtConfigError> {
    for key in choice.keys() {
        if !matches!(
            key.as_str(),
            "clientLanguage" | "percentage" | "clientHostname" | "serviceConfig"
        ) {
            return Err(error(
                format!("{path}.{key}"),
                "unknown field (a choice may have clientLanguage, percentage, clientHostname and serviceConfig)",
            ));
        }
    }
    match choice.get("serviceConfig") {
        Some(Value::Object(_)) => {}
        Some(_) => return Err(error(format!("{path}.serviceConfig"), "expected an object")),
        None => return Err(error(format!("{path}.serviceConfig"), "is required")),
    }
    let languages = strings(choice, path, "clientLanguage")?;
    let hostnames = strings(choice, path, "clientHostname")?;
    let percentage = match choice.get("percentage") {
        None => None,
        Some(v) => Some(v.as_u64().filter(|p| *p <= 100).ok_or_else(|| {
            error(
                format!("{path}.percentage"),
                format!("expected an integer from 0 to 100, got {v}"),
            )
        })?),
    };
    // An absent or empty list matches every client.
    let language = languages.is_empty()
        || languages
            .iter()
            .any(|l| l.eq_ignore_ascii_case(CLIENT_LANGUAGE));
    let host = hostnames.is_empty()
        || client
            .hostname
            .as_deref()
            .is_some_and(|h| hostnames.contains(&h));
    // Drawn only when the rest matches (`&&` stops early), so that a choice for
    // other clients does not use up a draw.
    Ok(language && host && percentage.is_none_or(|p| u64::from(percent()) <= p))
}

/// A criterion that is a list of strings (empty when absent).
fn strings<'a>(
    choice: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Vec<&'a str>, TxtConfigError> {
    let Some(value) = choice.get(key) else {
        return Ok(Vec::new());
    };
    let list = value
        .as_array()
        .ok_or_else(|| error(format!("{path}.{key}"), "expected a list of strings"))?;
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| error(format!("{path}.{key}[{i}]"), "expected a string"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(value: &str, draw: u32) -> Result<Option<String>, TxtConfigError> {
        choose_service_config(value, &Client::new(Some("host-1".into())), || draw)
    }

    const RR: &str = r#"{"loadBalancingPolicy":"round_robin"}"#;

    #[test]
    fn the_first_matching_choice_wins() {
        let value = format!(
            r#"[{{"clientLanguage": ["go", "java"], "serviceConfig": {{}}}},
                {{"clientHostname": ["other"], "serviceConfig": {{}}}},
                {{"clientLanguage": ["RUST"], "clientHostname": ["host-1"], "serviceConfig": {RR}}},
                {{"serviceConfig": {{"loadBalancingPolicy": "pick_first"}}}}]"#
        );
        assert_eq!(choose(&value, 1).unwrap().as_deref(), Some(RR));
        assert_eq!(choose("[]", 1).unwrap(), None);
        let other = r#"[{"clientLanguage": ["go"], "serviceConfig": {}}]"#;
        assert_eq!(choose(other, 1).unwrap(), None, "no choice for rust");
        let empty = r#"[{"clientLanguage": [], "clientHostname": [], "serviceConfig": {}}]"#;
        assert_eq!(choose(empty, 1).unwrap().as_deref(), Some("{}"));
    }

    #[test]
    fn percentages_draw() {
        let value = format!(r#"[{{"percentage": 30, "serviceConfig": {RR}}}]"#);
        assert_eq!(choose(&value, 30).unwrap().as_deref(), Some(RR));
        assert_eq!(choose(&value, 31).unwrap(), None);
        let none = r#"[{"percentage": 0, "serviceConfig": {}}]"#;
        assert_eq!(choose(none, 1).unwrap(), None);
        let all = r#"[{"percentage": 100, "serviceConfig": {}}]"#;
        assert_eq!(choose(all, 100).unwrap().as_deref(), Some("{}"));
    }

    #[test]
    fn an_unknown_host_matches_only_choices_without_hosts() {
        let value = r#"[{"clientHostname": ["host-1"], "serviceConfig": {}}]"#;
        let nobody = Client::new(None);
        assert_eq!(choose_service_config(value, &nobody, || 1).unwrap(), None);
    }

    #[test]
    fn any_bad_choice_invalidates_the_record_and_the_error_names_it() {
        for (value, path, reason) in [
            ("", "$", "not JSON"),
            ("{}", "$", "list"),
            ("[1]", "[0]", "object"),
            (
                r#"[{"serviceConfig": {}}, {"clientLanguag": ["rust"], "serviceConfig": {}}]"#,
                "[1].clientLanguag",
                "unknown field",
            ),
            (
                r#"[{"percentage": 101, "serviceConfig": {}}]"#,
                "[0].percentage",
                "0 to 100",
            ),
            (
                r#"[{"percentage": 5.5, "serviceConfig": {}}]"#,
                "[0].percentage",
                "integer",
            ),
            (
                r#"[{"percentage": -1, "serviceConfig": {}}]"#,
                "[0].percentage",
                "integer",
            ),
            (
                r#"[{"clientLanguage": "rust", "serviceConfig": {}}]"#,
                "[0].clientLanguage",
                "list",
            ),
            (
                r#"[{"clientHostname": [7], "serviceConfig": {}}]"#,
                "[0].clientHostname[0]",
                "string",
            ),
            (
                r#"[{"clientLanguage": ["rust"]}]"#,
                "[0].serviceConfig",
                "required",
            ),
            (
                r#"[{"serviceConfig": "round_robin"}]"#,
                "[0].serviceConfig",
                "object",
            ),
        ] {
            let err = choose(value, 1).unwrap_err();
            assert_eq!(err.path, path, "{value}");
            assert!(err.reason.contains(reason), "{value}: {err}");
        }
    }

    #[test]
    fn the_grpc_config_record_is_found_among_others_and_its_strings_joined() {
        let records = vec![
            vec!["v=spf1 -all"],
            vec!["grpc_config=[{\"serviceConfig\":", "{}}]"],
        ];
        assert_eq!(
            find_grpc_config(&records).as_deref(),
            Some(r#"[{"serviceConfig":{}}]"#)
        );
        assert_eq!(find_grpc_config(&[vec!["v=spf1 -all"]]), None);
        assert_eq!(find_grpc_config::<&str>(&[]), None);
    }
}
