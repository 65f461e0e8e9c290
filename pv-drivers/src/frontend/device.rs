//! The store side of a frontend: find device `<class>/<n>` of this domain, read the backend's
//! keys, publish ours, and move through the [`DeviceState`]s while watching the backend's.
//!
//! ```no_run
//! use pv_drivers::frontend::device::FrontendDir;
//! use guest_sdk::store::DeviceState;
//!
//! let dev = FrontendDir::find("vbd", 0).unwrap();
//! let deadline = guest_sdk::time::monotonic_ns() + 5 * guest_sdk::time::NS_PER_SEC;
//! let state = dev
//!     .wait_backend(deadline, |s| matches!(s, DeviceState::InitWait | DeviceState::Connected))
//!     .unwrap();
//! # let _ = state;
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

use guest_sdk::abi::store::{self as st, DeviceState};
use guest_sdk::abi::{DomId, Errno};
use guest_sdk::store::{self, OwnedValue, Value};
use guest_sdk::time;

/// Why a store step of a frontend failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// There is no such device: its frontend directory or its `backend` key is missing.
    NoDevice,
    /// The runtime is not set up (no StartInfo).
    NoRuntime,
    /// A store request failed (`key` names the node).
    Store {
        /// The node.
        key: String,
        /// The SDK's error.
        error: guest_sdk::Error,
    },
    /// A key holds a value of the wrong type or out of range.
    BadKey(String),
    /// The backend went to `Closing` or `Closed`.
    BackendClosed,
    /// The backend did not reach the state waited for before the deadline.
    Timeout,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::NoDevice => f.write_str("no such device"),
            DeviceError::NoRuntime => f.write_str("the guest runtime is not set up"),
            DeviceError::Store { key, error } => write!(f, "store: {key}: {error}"),
            DeviceError::BadKey(k) => write!(f, "store: {k}: wrong type or out of range"),
            DeviceError::BackendClosed => f.write_str("the backend closed the device"),
            DeviceError::Timeout => f.write_str("timed out waiting for the backend"),
        }
    }
}

impl core::error::Error for DeviceError {}

/// The watch token a frontend uses on its backend's `state` (device `n`, class hashed in).
fn token_for(class: &str, n: u32) -> u32 {
    // FNV-1a of the class in the high half, the device number in the low half.
    let mut h: u32 = 0x811c_9dc5;
    for b in class.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h & 0xffff_0000) | (n & 0xffff)
}

/// This domain's frontend directory of one device, and where its backend is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendDir {
    /// `/local/domain/<us>/device/<class>/<n>`.
    pub dir: String,
    /// The backend's directory (its `backend` key).
    pub backend: String,
    /// The backend's domain (its `backend-id` key).
    pub backend_id: DomId,
    token: u32,
}

impl FrontendDir {
    /// Finds device `<class>/<n>` of this domain and its backend. [`DeviceError::NoDevice`] if
    /// the directory or its `backend` key does not exist.
    pub fn find(class: &str, n: u32) -> Result<FrontendDir, DeviceError> {
        let si = guest_sdk::start_info().ok_or(DeviceError::NoRuntime)?;
        let dir = st::frontend_dir(si.domid, class, n)
            .map_err(|_| DeviceError::BadKey(format!("{class}/{n}")))?
            .to_string();
        let backend = match read_key(&format!("{dir}/{}", st::key::BACKEND)) {
            Ok(Some(OwnedValue::Str(s))) => s,
            Ok(_) => return Err(DeviceError::BadKey(format!("{dir}/{}", st::key::BACKEND))),
            Err(DeviceError::Store { error, .. }) if error.is(Errno::ENOENT) => {
                return Err(DeviceError::NoDevice)
            }
            Err(e) => return Err(e),
        };
        let key = format!("{dir}/{}", st::key::BACKEND_ID);
        let backend_id = read_u64(&key)?;
        let backend_id = DomId::try_from(backend_id).map_err(|_| DeviceError::BadKey(key))?;
        Ok(FrontendDir {
            dir,
            backend,
            backend_id,
            token: token_for(class, n),
        })
    }

    /// Reads key `name` of the backend's directory.
    pub fn backend_key(&self, name: &str) -> Result<Option<OwnedValue>, DeviceError> {
        read_key(&format!("{}/{name}", self.backend))
    }

    /// Reads `U64` key `name` of the backend's directory.
    pub fn backend_u64(&self, name: &str) -> Result<u64, DeviceError> {
        read_u64(&format!("{}/{name}", self.backend))
    }

    /// Reads `Bool` key `name` of the backend's directory; a missing key is `false`.
    pub fn backend_bool(&self, name: &str) -> Result<bool, DeviceError> {
        let key = format!("{}/{name}", self.backend);
        match read_key(&key) {
            Ok(Some(OwnedValue::Bool(b))) => Ok(b),
            Ok(_) => Err(DeviceError::BadKey(key)),
            Err(DeviceError::Store { error, .. }) if error.is(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The backend's current state (`Unknown` if it has none).
    pub fn backend_state(&self) -> Result<DeviceState, DeviceError> {
        let key = format!("{}/{}", self.backend, st::key::STATE);
        match read_key(&key) {
            Ok(Some(OwnedValue::State(s))) => Ok(s),
            Ok(_) => Err(DeviceError::BadKey(key)),
            Err(DeviceError::Store { error, .. }) if error.is(Errno::ENOENT) => {
                Ok(DeviceState::Unknown)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes key `name` of our directory.
    pub fn write(&self, name: &str, value: Value<'_>) -> Result<(), DeviceError> {
        let key = format!("{}/{name}", self.dir);
        store::write(&key, value).map_err(|error| DeviceError::Store { key, error })
    }

    /// Moves our `state` to `s`.
    pub fn set_state(&self, s: DeviceState) -> Result<(), DeviceError> {
        self.write(st::key::STATE, Value::State(s))
    }

    /// Waits until the backend's state satisfies `want` and returns it, or fails at
    /// `deadline_ns` (system time; [`DeviceError::Timeout`]) or when the backend goes to
    /// `Closing`/`Closed` without satisfying `want` ([`DeviceError::BackendClosed`]). Watches
    /// the backend's `state` meanwhile (the watch is removed before returning).
    pub fn wait_backend(
        &self,
        deadline_ns: u64,
        want: impl Fn(DeviceState) -> bool,
    ) -> Result<DeviceState, DeviceError> {
        let path = format!("{}/{}", self.backend, st::key::STATE);
        let watched = match store::watch(&path, self.token) {
            Ok(()) => true,
            // A watch left by an earlier wait: it serves as well.
            Err(e) if e.is(Errno::EEXIST) => true,
            Err(error) => return Err(DeviceError::Store { key: path, error }),
        };
        let r = self.wait_loop(deadline_ns, &want);
        if watched {
            let _ = store::unwatch(&path, self.token);
        }
        r
    }

    fn wait_loop(
        &self,
        deadline_ns: u64,
        want: &dyn Fn(DeviceState) -> bool,
    ) -> Result<DeviceState, DeviceError> {
        loop {
            let s = self.backend_state()?;
            if want(s) {
                return Ok(s);
            }
            if matches!(s, DeviceState::Closing | DeviceState::Closed) {
                return Err(DeviceError::BackendClosed);
            }
            if time::monotonic_ns() >= deadline_ns {
                return Err(DeviceError::Timeout);
            }
            // Events are hints: whichever comes (or none, at the deadline), read again.
            match store::wait_event(deadline_ns) {
                Ok(_) => {}
                Err(error) => {
                    return Err(DeviceError::Store {
                        key: format!("{}/{}", self.backend, st::key::STATE),
                        error,
                    })
                }
            }
        }
    }
}

fn read_key(key: &str) -> Result<Option<OwnedValue>, DeviceError> {
    store::read(key).map_err(|error| DeviceError::Store {
        key: key.to_string(),
        error,
    })
}

fn read_u64(key: &str) -> Result<u64, DeviceError> {
    match read_key(key)? {
        Some(OwnedValue::U64(v)) => Ok(v),
        _ => Err(DeviceError::BadKey(key.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_by_class_and_number() {
        assert_ne!(token_for("vbd", 0), token_for("vbd", 1));
        assert_ne!(token_for("vbd", 0), token_for("vif", 0));
        assert_ne!(token_for("vbd", 0), store::FIND_DOMAIN_TOKEN);
    }
}
