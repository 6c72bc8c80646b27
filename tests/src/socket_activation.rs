//! sshd started the way systemd's socket activation starts it, by `systemd-socket-activate` (the
//! activator) with the files [`SshdFiles`] writes: the activator listens, and only a connection
//! starts sshd — `sshd -D` handed the listening socket (`Accept=no`, like Ubuntu's ssh.socket and
//! ssh.service), or one `sshd -i` per connection with the accepted socket on its standard input
//! and output (`Accept=yes`, inetd).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    kill, listens, process_tree, run,
    sshd::{ssh_client, SSHD},
    wait_for, Endpoint, SshdFiles, SshdOptions,
};

/// Debian's `systemd` package.
const ACTIVATOR: &str = "/usr/bin/systemd-socket-activate";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `Accept=no`: at the first connection the activator execs `sshd -D` in its own process,
    /// the listening socket passed in `LISTEN_FDS`; sshd accepts the connection.
    ListenerPassed,
    /// `Accept=yes`: the activator accepts, and forks `sshd -i` for each connection, the
    /// connection on its descriptors 0 and 1.
    PerConnection,
}

pub struct SocketActivated {
    pub endpoint: Endpoint,
    pub files: SshdFiles,
    activator: Child,
}

impl SocketActivated {
    /// Starts the activator on `endpoint` and waits until its socket listens, read from /proc:
    /// a connection would start sshd.
    pub fn start(
        name: &str,
        endpoint: Endpoint,
        activation: Activation,
        options: SshdOptions,
    ) -> Self {
        assert!(
            Path::new(ACTIVATOR).exists(),
            "{ACTIVATOR} is missing: install Debian's systemd package"
        );
        assert!(
            options.netns.is_none() && options.client_netns.is_none(),
            "socket activation runs in the host's network namespace only"
        );
        let files = SshdFiles::write(name, endpoint, &options);
        let mut command = Command::new(ACTIVATOR);
        if activation == Activation::PerConnection {
            command.args(["--inetd", "--accept"]);
        }
        command.arg(format!("--listen={}:{}", endpoint.addr(), endpoint.port()));
        // The activator gives sshd only the environment it is told to (not its own).
        for (name, value) in &files.env {
            command.arg(format!("--setenv={name}={value}"));
        }
        let mode = match activation {
            Activation::ListenerPassed => "-D",
            Activation::PerConnection => "-i",
        };
        let activator = command
            .args([SSHD, mode, "-e", "-f"])
            .arg(files.config())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(files.new_log())
            .spawn()
            .expect("start systemd-socket-activate");
        let started = Self {
            endpoint,
            files,
            activator,
        };
        wait_for("the activator to listen", Duration::from_secs(10), || {
            listens(started.pid(), endpoint.port()).then_some(())
        });
        started
    }

    /// The activator; with [`Activation::ListenerPassed`], sshd's listener once a connection
    /// came (the activator execs sshd in its own process).
    pub fn pid(&self) -> u32 {
        self.activator.id()
    }

    /// What the activator and every sshd it started wrote (`-e`: their standard error).
    pub fn log(&self) -> String {
        self.files.log()
    }

    /// A real `ssh` client logging in with the test key and running `command`.
    pub fn ssh(&self, command: &str) -> std::process::Output {
        let (addr, port) = (self.endpoint.addr(), self.endpoint.port());
        let key = self.files.path("client_key");
        run(&mut ssh_client(None, "root", &addr, port, &key, command))
    }
}

impl Drop for SocketActivated {
    fn drop(&mut self) {
        // The activator (or the sshd it became) and every sshd it started.
        if !matches!(self.activator.try_wait(), Ok(Some(_))) {
            for pid in process_tree(self.pid()) {
                kill(pid, libc::SIGKILL);
            }
            let _ = self.activator.wait();
        }
    }
}
