//! Names of system call numbers and errno values, for evidence a person reads. Syscall
//! numbers are per architecture; a number missing here is shown as a number.

/// (number, name) for the system calls sshd's failures usually involve.
#[cfg(target_arch = "x86_64")]
const SYSCALLS: &[(i32, &str)] = &[
    (0, "read"),
    (1, "write"),
    (2, "open"),
    (3, "close"),
    (4, "stat"),
    (5, "fstat"),
    (6, "lstat"),
    (7, "poll"),
    (9, "mmap"),
    (10, "mprotect"),
    (12, "brk"),
    (16, "ioctl"),
    (21, "access"),
    (22, "pipe"),
    (23, "select"),
    (32, "dup"),
    (33, "dup2"),
    (41, "socket"),
    (42, "connect"),
    (43, "accept"),
    (44, "sendto"),
    (45, "recvfrom"),
    (46, "sendmsg"),
    (47, "recvmsg"),
    (48, "shutdown"),
    (49, "bind"),
    (50, "listen"),
    (53, "socketpair"),
    (54, "setsockopt"),
    (56, "clone"),
    (57, "fork"),
    (58, "vfork"),
    (59, "execve"),
    (61, "wait4"),
    (62, "kill"),
    (72, "fcntl"),
    (80, "chdir"),
    (89, "readlink"),
    (90, "chmod"),
    (92, "chown"),
    (97, "getrlimit"),
    (105, "setuid"),
    (106, "setgid"),
    (112, "setsid"),
    (116, "setgroups"),
    (117, "setresuid"),
    (119, "setresgid"),
    (157, "prctl"),
    (160, "setrlimit"),
    (161, "chroot"),
    (257, "openat"),
    (262, "newfstatat"),
    (269, "faccessat"),
    (270, "pselect6"),
    (271, "ppoll"),
    (288, "accept4"),
    (292, "dup3"),
    (293, "pipe2"),
    (302, "prlimit64"),
    (318, "getrandom"),
    (322, "execveat"),
    (332, "statx"),
    (435, "clone3"),
    (436, "close_range"),
    (437, "openat2"),
    (439, "faccessat2"),
];

#[cfg(target_arch = "aarch64")]
const SYSCALLS: &[(i32, &str)] = &[
    (23, "dup"),
    (24, "dup3"),
    (25, "fcntl"),
    (29, "ioctl"),
    (48, "faccessat"),
    (49, "chdir"),
    (51, "chroot"),
    (56, "openat"),
    (57, "close"),
    (59, "pipe2"),
    (63, "read"),
    (64, "write"),
    (72, "pselect6"),
    (73, "ppoll"),
    (78, "readlinkat"),
    (79, "newfstatat"),
    (80, "fstat"),
    (129, "kill"),
    (144, "setgid"),
    (146, "setuid"),
    (147, "setresuid"),
    (149, "setresgid"),
    (157, "setsid"),
    (159, "setgroups"),
    (163, "getrlimit"),
    (164, "setrlimit"),
    (167, "prctl"),
    (198, "socket"),
    (199, "socketpair"),
    (200, "bind"),
    (201, "listen"),
    (202, "accept"),
    (203, "connect"),
    (206, "sendto"),
    (207, "recvfrom"),
    (208, "setsockopt"),
    (210, "shutdown"),
    (211, "sendmsg"),
    (212, "recvmsg"),
    (214, "brk"),
    (215, "munmap"),
    (220, "clone"),
    (221, "execve"),
    (222, "mmap"),
    (226, "mprotect"),
    (242, "accept4"),
    (260, "wait4"),
    (261, "prlimit64"),
    (278, "getrandom"),
    (281, "execveat"),
    (291, "statx"),
    (435, "clone3"),
    (436, "close_range"),
    (437, "openat2"),
    (439, "faccessat2"),
];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYSCALLS: &[(i32, &str)] = &[];

pub fn syscall_name(nr: i32) -> String {
    SYSCALLS
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, name)| (*name).to_owned())
        .unwrap_or_else(|| format!("syscall {nr}"))
}

/// The number of the system call `name` on this architecture, where the table has it.
pub fn number_of(name: &str) -> Option<u16> {
    SYSCALLS
        .iter()
        .find(|(_, n)| *n == name)
        .and_then(|(nr, _)| u16::try_from(*nr).ok())
}

/// Process-creating system calls: EAGAIN there means a process limit.
pub fn creates_process(name: &str) -> bool {
    matches!(name, "clone" | "clone3" | "fork" | "vfork")
}

pub const EPERM: i32 = 1;
pub const EAGAIN: i32 = 11;
pub const ENOMEM: i32 = 12;
pub const EACCES: i32 = 13;
pub const ENFILE: i32 = 23;
pub const EMFILE: i32 = 24;

pub fn errno_name(errno: i32) -> String {
    const NAMES: &[(i32, &str)] = &[
        (EPERM, "EPERM"),
        (2, "ENOENT"),
        (3, "ESRCH"),
        (4, "EINTR"),
        (5, "EIO"),
        (9, "EBADF"),
        (10, "ECHILD"),
        (EAGAIN, "EAGAIN"),
        (ENOMEM, "ENOMEM"),
        (EACCES, "EACCES"),
        (14, "EFAULT"),
        (16, "EBUSY"),
        (17, "EEXIST"),
        (20, "ENOTDIR"),
        (21, "EISDIR"),
        (22, "EINVAL"),
        (ENFILE, "ENFILE"),
        (EMFILE, "EMFILE"),
        (28, "ENOSPC"),
        (30, "EROFS"),
        (32, "EPIPE"),
        (38, "ENOSYS"),
        (95, "EOPNOTSUPP"),
        (98, "EADDRINUSE"),
        (99, "EADDRNOTAVAIL"),
        (104, "ECONNRESET"),
        (110, "ETIMEDOUT"),
        (111, "ECONNREFUSED"),
        (113, "EHOSTUNREACH"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == errno)
        .map(|(_, name)| (*name).to_owned())
        .unwrap_or_else(|| format!("errno {errno}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_names() {
        assert_eq!(syscall_name(293), "pipe2");
        assert_eq!(syscall_name(56), "clone");
        assert_eq!(syscall_name(9999), "syscall 9999");
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(EMFILE), "EMFILE");
        assert_eq!(errno_name(200), "errno 200");
    }
}
