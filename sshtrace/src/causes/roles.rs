//! Which part of OpenSSH a process of a connection is, from the process tree and the program
//! it executed — never from its name alone (a title like `sshd: alice [priv]` is sshd's own,
//! and a tenant can set any name).
//!
//! - listener: the process that accepted the connection (it owns the listening sockets);
//! - session: the process the listener started for the connection (`sshd-session` in 9.8+,
//!   the re-executed `sshd -R` monitor before);
//! - preauth: the unprivileged pre-authentication process (`sshd-auth` in 10.0+; before, the
//!   session's first child, the `[net]` process);
//! - user: the process that serves the authenticated user (the session's child forked after
//!   the pre-authentication child ended), and anything it started that still runs sshd.

use super::{Background, Ended};
use crate::{trace::state::Process, verdict::Role};

pub fn role_of(pid: u32, e: &Ended, ctx: &Background) -> Role {
    if Some(pid) == e.conn.listener_pid || ctx.sshd.listeners.contains_key(&pid) {
        return Role::Listener;
    }
    if Some(pid) == e.conn.session_pid {
        return Role::Session;
    }
    let Some(p) = e.process(pid) else {
        return Role::Session;
    };
    if executed(p, "sshd-auth") {
        return Role::Preauth;
    }
    if p.parent.is_some() && p.parent == e.conn.session_pid {
        return if forked_after_a_sibling_ended(p, e) {
            Role::User
        } else {
            Role::Preauth
        };
    }
    Role::User
}

/// Whether the process executed a program of that file name.
fn executed(p: &Process, program: &str) -> bool {
    p.exe
        .as_deref()
        .and_then(|path| path.rsplit('/').next())
        .is_some_and(|name| name == program)
}

/// The session forks the user's process once the pre-authentication child has exited.
fn forked_after_a_sibling_ended(p: &Process, e: &Ended) -> bool {
    e.tree.iter().any(|sibling| {
        sibling.pid != p.pid
            && sibling.parent == p.parent
            && sibling.exit.as_ref().is_some_and(|x| x.ts_ns <= p.first_ts)
    })
}
