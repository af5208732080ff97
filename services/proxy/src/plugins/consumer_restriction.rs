//! `consumer-restriction` (CONTRACT §12, APISIX's subset): which consumers, by name or by
//! consumer group, may use a route — on the access phase, after key-auth identified the
//! caller.

use std::sync::Arc;

use aigw_llm::envelope::Class;
use aigw_model::restriction::{ConsumerRestriction, RestrictBy};
use aigw_model::route::from_value_at;
use http::StatusCode;
use serde_json::Value;

use crate::errors::GatewayError;
use crate::phases::{Access, Plugin, PluginEnv, PluginError, Step};

pub const NAME: &str = "consumer-restriction";

#[derive(Debug)]
pub struct Restriction {
    by: RestrictBy,
    /// true: only `list` may pass (whitelist); false: `list` may not (blacklist).
    allow: bool,
    list: Vec<String>,
    status: StatusCode,
    message: String,
}

pub fn factory(conf: &Value, _env: &PluginEnv<'_>) -> Result<Arc<dyn Plugin>, PluginError> {
    Ok(Arc::new(compile(conf)?))
}

fn compile(conf: &Value) -> Result<Restriction, PluginError> {
    let c: ConsumerRestriction = from_value_at("plugins.consumer-restriction", conf).map_err(|e| PluginError::new(NAME, e.message))?;
    let (allow, list) = match (c.whitelist, c.blacklist) {
        (Some(w), _) => (true, w),
        (None, Some(b)) => (false, b),
        (None, None) => return Err(PluginError::new(NAME, "one of whitelist or blacklist is required")),
    };
    let status = StatusCode::from_u16(c.rejected_code).map_err(|_| PluginError::new(NAME, "rejected_code: not a status"))?;
    let kind = match c.by {
        RestrictBy::ConsumerName => "consumer_name",
        RestrictBy::ConsumerGroupId => "consumer_group_id",
    };
    let message = c.rejected_msg.unwrap_or_else(|| format!("The {kind} is forbidden."));
    Ok(Restriction { by: c.by, allow, list, status, message })
}

impl Restriction {
    /// Whether a caller with this name and group passes.
    fn admits(&self, name: &str, group: Option<&str>) -> bool {
        let value = match self.by {
            RestrictBy::ConsumerName => Some(name),
            RestrictBy::ConsumerGroupId => group,
        };
        let listed = value.is_some_and(|v| self.list.iter().any(|l| l == v));
        listed == self.allow
    }
}

impl Plugin for Restriction {
    fn name(&self) -> &str {
        NAME
    }

    fn priority(&self) -> i32 {
        2400
    }

    fn access(&self, cx: &mut Access<'_>) -> Step {
        let Some(who) = &cx.rec.consumer else {
            return Step::Refuse(GatewayError::refused(
                StatusCode::UNAUTHORIZED,
                Class::Auth,
                "missing_identity",
                "Missing authentication or identity verification.",
            ));
        };
        if self.admits(&who.name, who.group.as_deref()) {
            Step::Next
        } else {
            Step::Refuse(GatewayError::refused(self.status, Class::Permission, "consumer_restricted", self.message.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn admits(conf: Value, name: &str, group: Option<&str>) -> bool {
        compile(&conf).unwrap().admits(name, group)
    }

    #[test]
    fn lists() {
        assert!(admits(json!({"whitelist": ["a"]}), "a", None));
        assert!(!admits(json!({"whitelist": ["a"]}), "b", None));
        assert!(!admits(json!({"blacklist": ["a"]}), "a", None));
        assert!(admits(json!({"blacklist": ["a"]}), "b", None));
        assert!(admits(json!({"type": "consumer_group_id", "whitelist": ["gold"]}), "x", Some("gold")));
        assert!(!admits(json!({"type": "consumer_group_id", "whitelist": ["gold"]}), "x", None));
        assert!(admits(json!({"type": "consumer_group_id", "blacklist": ["free"]}), "x", None));
    }
}
