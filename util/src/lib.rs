//! The lowest layer of altovirt, which every other crate may use: the
//! epoll [`event_loop`] that device back-ends and QMP-independent threads
//! run on, and [`confine`], how a thread installs its seccomp filter. It
//! depends on no other crate of the workspace.

pub mod confine;
pub mod event_loop;
pub mod freeze;
