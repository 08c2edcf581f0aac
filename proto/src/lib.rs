//! `ixn-proto`: the IXN/1 registration protocol as pure values, with no I/O.
//!
//! Codec ([`protocol`]), one connection's state machine ([`session`]) and its whole
//! per-socket protocol ([`connection`]), the client registry
//! ([`registry`]), the hashed timer wheel ([`timer_wheel`]) and PROXY header parsing
//! ([`proxy`]). Nothing here opens a socket, reads a clock or a file, logs, or records a
//! metric: time, bytes and registry text are arguments, answers and decisions are return
//! values. Engines (`ixn-server`'s io_uring workers) and tools (`ixn-loadgen`) build on it;
//! the crate's dependencies are the wall that keeps it that way.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Declares a label enumeration once: the enum, `ALL`, and for each value its label
/// (`name`) and dense `index`, so metrics, docs tests and logs all derive from one list.
/// Exported so the server declares its own labels the same way.
#[macro_export]
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, for pre-registering metric series.
            pub const ALL: [$name; [$($label),+].len()] = [$(Self::$variant),+];

            /// The label value.
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $label, )+
                }
            }

            /// Position in [`Self::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

pub mod connection;
pub mod defaults;
pub mod handoff;
pub mod names;
pub mod protocol;
pub mod proxy;
pub mod registry;
pub mod session;
pub mod slot_wheel;
pub mod timer_wheel;
pub mod tls;
