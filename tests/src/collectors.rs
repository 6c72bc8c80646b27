//! Real collectors a test runs: a TCP JSON-lines receiver it can stop and restart, and
//! rsyslog receiving RFC 5424 over TCP (octet counting) and UDP into a file.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use crate::wait_for;

/// The accepting thread of a running receiver and the connections it took.
struct Running {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: thread::JoinHandle<()>,
}

/// Accepts connections on `addr` and keeps every line received.
pub struct LineReceiver {
    addr: String,
    pub lines: Arc<Mutex<Vec<String>>>,
    running: Option<Running>,
}

impl LineReceiver {
    pub fn start(addr: &str) -> Self {
        let mut r = Self {
            addr: addr.to_owned(),
            lines: Arc::default(),
            running: None,
        };
        r.resume();
        r
    }

    /// Listens again (after `stop`), on the same address.
    pub fn resume(&mut self) {
        let listener = TcpListener::bind(&self.addr).expect("bind receiver");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (flag, open, lines) = (stop.clone(), conns.clone(), self.lines.clone());
        let handle = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        open.lock().unwrap().push(stream.try_clone().unwrap());
                        let lines = lines.clone();
                        thread::spawn(move || {
                            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                                lines.lock().unwrap().push(line);
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        self.running = Some(Running {
            stop,
            conns,
            thread: handle,
        });
    }

    /// Closes the listener and every connection (the sender sees them closed).
    pub fn stop(&mut self) {
        if let Some(Running {
            stop,
            conns,
            thread: handle,
        }) = self.running.take()
        {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
            for c in conns.lock().unwrap().iter() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for LineReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// rsyslogd with its own configuration, writing what it receives, one line per message with
/// the RFC 5424 fields separated by `|`: input|pri|version|hostname|app|procid|msgid|sd|msg.
pub struct Rsyslog {
    pub dir: PathBuf,
    child: Child,
}

impl Rsyslog {
    pub fn start(name: &str, addr: &str, tcp_port: u16, udp_port: u16) -> Self {
        let dir =
            std::env::temp_dir().join(format!("sshtrace-rsyslog-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("received.log");
        let conf = format!(
            r#"global(workDirectory="{d}")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" address="{addr}" port="{tcp_port}")
input(type="imudp" address="{addr}" port="{udp_port}")
template(name="fields" type="string" string="%inputname%|%pri%|%protocol-version%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\n")
action(type="omfile" file="{out}" template="fields")
"#,
            d = dir.display(),
            out = out.display()
        );
        fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let child = Command::new("rsyslogd")
            .args(["-n", "-iNONE", "-f"])
            .arg(dir.join("rsyslog.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("rsyslogd.err")).unwrap())
            .spawn()
            .expect("start rsyslogd");
        wait_for("rsyslogd to listen", Duration::from_secs(10), || {
            TcpStream::connect((addr, tcp_port)).ok()
        });
        Self { dir, child }
    }

    /// Messages received so far, split into their fields.
    pub fn messages(&self) -> Vec<Vec<String>> {
        fs::read_to_string(self.dir.join("received.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.splitn(9, '|').map(str::to_owned).collect())
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
