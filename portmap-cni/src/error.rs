//! The CNI error object: what a plugin prints on stdout, with a non-zero exit, when a command
//! fails (CNI specification 1.0.0, "Error").

use serde::Serialize;

/// The specification's well-known error codes (0-99 are reserved for it), and this plugin's
/// own (100 and up).
pub mod code {
    /// The configuration's `cniVersion` is not one this plugin speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field this plugin understands but cannot honour (the message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// A required `CNI_*` environment variable is missing or malformed.
    pub const INVALID_ENV: u32 = 4;
    /// Reading or writing state, or reaching or starting the node's portmap, failed.
    pub const IO_FAILURE: u32 = 5;
    /// The configuration on stdin is not JSON.
    pub const DECODE: u32 = 6;
    /// The configuration is JSON but wrong: a missing or malformed field, no prevResult.
    pub const INVALID_CONFIG: u32 = 7;
    /// Another invocation held the node's lock for too long; the runtime may retry.
    pub const TRY_AGAIN: u32 = 11;
    /// The node's portmap refused the mappings: a host port another container or process
    /// holds. Nothing was applied.
    pub const REFUSED: u32 = 100;
    /// CHECK: the container's bindings are not (all) in place.
    pub const NOT_IN_PLACE: u32 = 101;
}

/// A failed command, as the specification shapes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    /// What went wrong, naming the input and the reason.
    pub msg: String,
    /// More context: where, and what to do about it.
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON object for stdout, in the configuration's version (or the newest, when the
    /// configuration could not be read).
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Shape<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        serde_json::to_string(&Shape {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|e| {
            // Serialising plain strings and a number cannot fail; keep the shape regardless.
            format!(
                r#"{{"cniVersion":"{cni_version}","code":{},"msg":"encoding the error failed: {e}","details":""}}"#,
                self.code
            )
        })
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_object_has_the_specifications_four_fields() {
        let json = CniError::new(code::INVALID_CONFIG, "no \"name\"", "d").to_json("1.0.0");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["cniVersion"], "1.0.0");
        assert_eq!(value["code"], 7);
        assert_eq!(value["msg"], "no \"name\"");
        assert_eq!(value["details"], "d");
        assert_eq!(value.as_object().unwrap().len(), 4);
    }
}
