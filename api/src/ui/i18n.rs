//! The viewer's language (the texts are in [`crate::locale`]), chosen per request (the
//! `fy_lang` cookie, else `Accept-Language`), and times shown in the viewer's time zone (the
//! `fy_tz` cookie the pages' script sets; UTC without it).

use chrono::{DateTime, Utc};

use crate::domain::Problem;
use crate::error::ApiError;
use crate::error_code::ErrorCode;
pub use crate::locale::Lang;
use crate::locale::{self, Args};

/// Translating for one request: texts by key, words for the API's values, and times in the
/// viewer's zone.
#[derive(Debug, Clone)]
pub struct Tr {
    pub lang: Lang,
    pub tz: chrono_tz::Tz,
}

impl Tr {
    /// The text of `key`.
    pub fn t(&self, key: &str) -> String {
        locale::text(self.lang, key)
    }

    /// The text of `key` with one argument, `$n` in the Fluent text.
    pub fn n(&self, key: &str, n: i64) -> String {
        let args = Args::from([("n".into(), n.into())]);
        locale::text_with(self.lang, key, &args)
    }

    /// A value of the API (`ready`, `riscv64`, `usage_right`) in words: the key
    /// `<kind>-<value>`, or the value itself where it needs no translation.
    pub fn word(&self, kind: &str, value: impl std::fmt::Display) -> String {
        let value = value.to_string();
        let key = format!("{kind}-{}", value.replace('_', "-"));
        if locale::has(self.lang, &key) { self.t(&key) } else { value }
    }

    /// An audit entry's action (`machine.lifecycle_changed`) in words: the key
    /// `did-machine-lifecycle-changed`, or the action itself.
    pub fn did(&self, action: &str) -> String {
        let key = format!("did-{}", action.replace(['.', '_'], "-"));
        if locale::has(self.lang, &key) { self.t(&key) } else { action.to_owned() }
    }

    /// A text Fleetyard recorded in English (a health reason, why a lease ended, a cloud note)
    /// in the viewer's language: read back against its template, or else each `; `-separated
    /// part; times in the viewer's zone. A part no template makes (a person's note) is shown as
    /// it is.
    pub fn said(&self, text: &str) -> String {
        self.recorded(text).unwrap_or_else(|| {
            let parts = text.split("; ").map(|part| self.recorded(part).unwrap_or_else(|| part.to_owned()));
            parts.collect::<Vec<_>>().join("; ")
        })
    }

    /// One recorded text in the viewer's language, if a template makes it.
    fn recorded(&self, text: &str) -> Option<String> {
        let (key, values) = locale::read_recorded(text)?;
        let mut args = Args::new();
        for (name, value) in values {
            let value = match DateTime::parse_from_rfc3339(value) {
                Ok(at) => self.time(&at.to_utc()),
                Err(_) if name.starts_with("said_") => self.said(value),
                Err(_) => value.to_owned(),
            };
            args.insert(name.into(), value.into());
        }
        Some(locale::text_with(self.lang, key, &args))
    }

    /// A field's problem in the viewer's language.
    pub fn problem(&self, problem: &Problem) -> String {
        problem.text(self.lang)
    }

    /// A refusal of the API in the viewer's language: the problem of each field it names, or
    /// else the text of its code with its details as arguments (states, statuses and actions
    /// in words).
    pub fn error(&self, error: &ApiError) -> String {
        if !error.field_errors().is_empty() {
            let fields = error.field_errors().iter().map(|e| format!("{}: {}", e.field, self.problem(&e.problem)));
            return fields.collect::<Vec<_>>().join("; ");
        }
        let mut args = Args::new();
        for (name, value) in error.details().and_then(|d| d.as_object()).into_iter().flatten() {
            let kind = match (error.code(), name.as_str()) {
                (_, "from" | "to") | (ErrorCode::InvalidTransition, "allowed") => Some("lifecycle"),
                (_, "status") => Some("status"),
                (_, "model") => Some("model"),
                (_, "action") | (ErrorCode::InvalidAction, "allowed") => Some("action"),
                _ => None,
            };
            let text = |v: &serde_json::Value| match (kind, v.as_str()) {
                (Some(kind), Some(word)) => self.word(kind, word),
                (_, Some(text)) => text.to_owned(),
                _ => v.to_string(),
            };
            let value = match value {
                serde_json::Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
                serde_json::Value::Number(n) => {
                    args.insert(name.clone().into(), n.as_i64().unwrap_or_default().into());
                    continue;
                }
                other => text(other),
            };
            args.insert(name.clone().into(), value.into());
        }
        locale::text_with(self.lang, &format!("code-{}", error.code()), &args)
    }

    /// A time in the viewer's zone, to the minute, with the zone's abbreviation.
    pub fn time(&self, at: &DateTime<Utc>) -> String {
        at.with_timezone(&self.tz).format("%Y-%m-%d %H:%M %Z").to_string()
    }

    pub fn time_opt(&self, at: &Option<DateTime<Utc>>) -> String {
        at.as_ref().map_or_else(|| "—".to_owned(), |at| self.time(at))
    }

    /// A length of time in the largest two units (`3 h 20 min`, `2 d 4 h`).
    pub fn duration_secs(&self, secs: f64) -> String {
        let secs = secs.max(0.0) as i64;
        let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
        let (du, hu, mu) = match self.lang {
            Lang::En => (" d", " h", " min"),
            Lang::ZhCn => (" 天", " 小时", " 分钟"),
        };
        if d > 0 {
            format!("{d}{du} {h}{hu}")
        } else if h > 0 {
            format!("{h}{hu} {m}{mu}")
        } else {
            format!("{m}{mu}")
        }
    }

    /// How long ago `at` was.
    pub fn since(&self, at: &Option<DateTime<Utc>>) -> String {
        match at {
            Some(at) => self.duration_secs((Utc::now() - *at).num_seconds() as f64),
            None => "—".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn keys(lang: &str) -> BTreeSet<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("locales").join(lang);
        let mut keys = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).expect("a locale folder") {
            let text = std::fs::read_to_string(entry.expect("an entry").path()).expect("an ftl file");
            for line in text.lines() {
                if let Some((key, _)) = line.split_once(" =")
                    && !key.starts_with(['#', ' ', '.', '-'])
                    && !key.is_empty()
                {
                    assert!(keys.insert(key.to_owned()), "{lang}: `{key}` is defined twice");
                }
            }
        }
        keys
    }

    #[test]
    fn every_text_exists_in_both_languages() {
        let (en, zh) = (keys("en-US"), keys("zh-CN"));
        let missing_zh: Vec<_> = en.difference(&zh).collect();
        let missing_en: Vec<_> = zh.difference(&en).collect();
        assert!(missing_zh.is_empty(), "in English, not in Chinese: {missing_zh:?}");
        assert!(missing_en.is_empty(), "in Chinese, not in English: {missing_en:?}");
    }

    #[test]
    fn every_key_the_templates_and_pages_use_is_defined() {
        let en = keys("en-US");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(root.join("templates")).unwrap().map(|e| e.unwrap().path()).collect();
        files.extend(std::fs::read_dir(root.join("src/ui")).unwrap().map(|e| e.unwrap().path()));
        let mut missing = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for call in [".t(\"", ".n(\""] {
                for piece in text.split(call).skip(1) {
                    let key = piece.split('"').next().unwrap();
                    if !en.contains(key) {
                        missing.push(format!("{}: {key}", file.display()));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "keys used but not defined: {missing:#?}");
    }

    #[test]
    fn every_audit_action_the_code_records_has_words() {
        let en = keys("en-US");
        let mut missing = Vec::new();
        let mut files = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // `Change::new("machine.quarantined", ...)`, and the donation actions' table.
            let actions = text
                .split("Change::new(\"")
                .skip(1)
                .chain(text.split("=> \"donation.").skip(1))
                .filter_map(|piece| piece.split('"').next());
            for action in actions {
                let action = if action.contains('.') { action.to_owned() } else { format!("donation.{action}") };
                let key = format!("did-{}", action.replace(['.', '_'], "-"));
                if !en.contains(&key) {
                    missing.push(format!("{}: {key}", path.display()));
                }
            }
        }
        assert!(missing.is_empty(), "audit actions without words: {missing:#?}");
    }

    #[test]
    fn recorded_texts_are_read_back_and_shown_in_the_viewer_s_language() {
        // Every template reads back what it makes (its own key, its own arguments).
        let en_file = include_str!("../../locales/en-US/recorded.ftl");
        for (key, template) in
            en_file.lines().filter_map(|l| l.split_once(" = ")).filter(|(k, _)| k.starts_with("said-"))
        {
            let sample = |name: &str| {
                if name.starts_with("said_") { "its time ran out".to_owned() } else { format!("<{name}>") }
            };
            let names: Vec<&str> = template.split("{ $").skip(1).filter_map(|p| p.split(" }").next()).collect();
            let args = Args::from_iter(names.iter().map(|n| ((*n).to_owned().into(), sample(n).into())));
            let text = locale::text_with(Lang::En, key, &args);
            let (read, values) =
                locale::read_recorded(&text).unwrap_or_else(|| panic!("{key}: `{text}` not read back"));
            assert_eq!(read, key, "`{text}`");
            assert!(values.iter().all(|(name, value)| *value == sample(name)), "{key}: {values:?}");
        }
        // What the code records, as it records it.
        let zh = Tr { lang: Lang::ZhCn, tz: chrono_tz::Asia::Shanghai };
        for recorded in [
            "its time ran out",
            "no machine became free before its deadline",
            "its machine left the pool (maintenance)",
            "its job was cancelled by ops@example.org",
            "released by ci-riscv",
            "its cloud instance was lost; queued again",
            "no cloud offers riscv64 with 64 cores; waiting for the labs",
            "facts reported by agent",
            "huawei server 6f1c-aa imported",
            "every cloud offer that fits failed recently (capacity); trying again from 2026-12-06T01:00:00+00:00; waiting for the labs",
        ] {
            assert!(locale::read_recorded(recorded).is_some(), "`{recorded}`");
        }
        assert_eq!(
            zh.said("no heartbeat since 2026-12-06T00:30:00+00:00 and the SSH check failed"),
            "自 2026-12-06 08:30 CST 起没有心跳，且 SSH 检查失败"
        );
        assert_eq!(zh.said("root file system 97% full; clock off by 4.2 s"), "根文件系统已用 97%; 时钟偏差 4.2 秒");
        assert_eq!(zh.said("fixed the fan"), "fixed the fan", "a person's note is shown as it is");
    }

    #[test]
    fn the_browser_s_language_is_read_with_its_weights() {
        assert_eq!(Lang::from_accept_language("zh-CN,zh;q=0.9,en;q=0.8"), Some(Lang::ZhCn));
        assert_eq!(Lang::from_accept_language("en-US,en;q=0.9"), Some(Lang::En));
        assert_eq!(Lang::from_accept_language("fr, en;q=0.5, zh;q=0.7"), Some(Lang::ZhCn));
        assert_eq!(Lang::from_accept_language("fr"), None);
    }

    #[test]
    fn values_are_translated_and_unknown_ones_shown_as_they_are() {
        let zh = Tr { lang: Lang::ZhCn, tz: chrono_tz::Asia::Shanghai };
        assert_eq!(zh.word("lifecycle", "ready"), "可用");
        assert_eq!(zh.word("arch", "riscv64"), "riscv64");
        let at = DateTime::parse_from_rfc3339("2026-12-06T00:30:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(zh.time(&at), "2026-12-06 08:30 CST");
    }
}
