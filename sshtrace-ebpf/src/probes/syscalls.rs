//! Failed system calls of tracked processes (EMFILE on accept, EAGAIN on clone, ENOENT on a
//! host key, …), with the path argument of failed opens, stats, accesses and execs. Bursts of
//! the same failure (a listener spinning on accept with EMFILE) are counted here and sent at
//! most every 100 ms per key.
//!
//! The path is read at the exit, from the task's saved registers (`bpf_task_pt_regs`, 5.15+):
//! no entry is hooked, so that the other syscalls of the host stay off the tracepoint's way.
//! Where that helper is missing, the entry of each call that takes a path saves it.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user_str_bytes, bpf_task_pt_regs,
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, LruPerCpuHashMap},
    programs::TracePointContext,
};
use sshtrace_common::{
    SyscallErrorEvent, TaskCreds, ABSENT, GROUPS_REPORTED, RLIMITS_REPORTED,
    SYSCALL_ERROR_INTERVAL_NS,
};

use super::{field, member};
use crate::{maps::pid_tracked, record::submit};

/// The path argument of a call in progress: `[syscall nr, user pointer]` by pid_tgid.
#[map]
static OPEN_ARGS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(4096, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct BurstKey {
    tgid: u32,
    nr: i32,
    ret: i32,
    _pad: u32,
    /// The path argument's address: failures on different paths are different stories.
    path: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Burst {
    last_sent_ns: u64,
    suppressed: u32,
    _pad: u32,
}

/// Per CPU, so that threads failing at once on two CPUs never carry the same count twice.
#[map]
static BURSTS: LruPerCpuHashMap<BurstKey, Burst> = LruPerCpuHashMap::with_max_entries(4096, 0);

/// One program per entry of `PATH_SYSCALLS`, each reading the path at its own offset.
macro_rules! path_programs {
    ($($name:ident => $index:expr),* $(,)?) => {$(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = save_path(&ctx, layout!(syscall.path_arg)[$index]);
            0
        }
    )*};
}

path_programs! {
    sys_enter_open => 0,
    sys_enter_openat => 1,
    sys_enter_openat2 => 2,
    sys_enter_newstat => 3,
    sys_enter_newlstat => 4,
    sys_enter_newfstatat => 5,
    sys_enter_statx => 6,
    sys_enter_access => 7,
    sys_enter_faccessat => 8,
    sys_enter_faccessat2 => 9,
    sys_enter_execve => 10,
}

/// The path argument of the current task's call `nr` (0 for a call that takes none), from its
/// saved registers: a failed call left them as they were at its entry.
#[inline(always)]
fn path_in_registers(nr: i64) -> u64 {
    let l = layout!(syscall);
    let mut at = ABSENT;
    for i in 0..l.path_nr.len() {
        if i64::from(l.path_nr[i]) == nr {
            at = l.path_regs[i];
        }
    }
    if at == ABSENT {
        return 0;
    }
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    member::<u64>(regs, at).unwrap_or(0)
}

/// The path the entry saved for the current task's call `nr`, taken out of the map.
#[inline(always)]
fn saved_path(pid_tgid: u64, nr: i64) -> u64 {
    match unsafe { OPEN_ARGS.get(pid_tgid) }.copied() {
        Some([path_nr, path]) => {
            let _ = OPEN_ARGS.remove(pid_tgid);
            if path_nr == nr as u64 {
                path
            } else {
                0
            }
        }
        None => 0,
    }
}

fn save_path(ctx: &TracePointContext, offset: u16) -> Result<(), i32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !pid_tracked((pid_tgid >> 32) as u32) {
        return Ok(());
    }
    let nr: i32 = field(ctx, layout!(syscall.enter_nr))?;
    let path: u64 = field(ctx, offset)?;
    OPEN_ARGS.insert(pid_tgid, [nr as u64, path], 0)
}

const MAX_ERRNO: i64 = 4095;
const EACCES: i64 = 13;
/// ERESTARTSYS … ERESTART_RESTARTBLOCK: internal codes a process never sees.
const KERNEL_RESTART_MIN: i64 = 512;
const KERNEL_RESTART_MAX: i64 = 516;

/// The exit of each of `FAILURE_SYSCALLS`: one program attached to every one of them, so that
/// only those calls pay for it (every `sys_exit_*` record has the same layout); a path read
/// from the saved registers.
#[tracepoint]
pub fn sys_exit_failed(ctx: TracePointContext) -> u32 {
    let l = layout!(syscall);
    if let Ok(ret) = field::<i64>(&ctx, l.ret) {
        let nr = || field::<i32>(&ctx, l.exit_nr).map(i64::from);
        let _ = syscall_failed(ret, nr, |_, nr| path_in_registers(nr));
    }
    0
}

/// The same where `bpf_task_pt_regs` is missing (before 5.15): the path is the one the call's
/// entry saved.
#[tracepoint]
pub fn sys_exit_failed_saved_path(ctx: TracePointContext) -> u32 {
    let l = layout!(syscall);
    if let Ok(ret) = field::<i64>(&ctx, l.ret) {
        let nr = || field::<i32>(&ctx, l.exit_nr).map(i64::from);
        let _ = syscall_failed(ret, nr, saved_path);
    }
    0
}

/// A syscall's return in the current task: reported when it is an error of a followed process,
/// with the path `path(pid_tgid, nr)` finds (0 for none).
#[inline(always)]
pub(super) fn syscall_failed(
    ret: i64,
    nr: impl FnOnce() -> Result<i64, i32>,
    path: impl FnOnce(u64, i64) -> u64,
) -> Result<(), i32> {
    // The cheap test first: this runs for every call of these syscalls on the host.
    if !(-MAX_ERRNO..0).contains(&ret) || (-KERNEL_RESTART_MAX..=-KERNEL_RESTART_MIN).contains(&ret)
    {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !pid_tracked(tgid) {
        return Ok(());
    }
    let nr: i64 = nr()?;
    let path = path(pid_tgid, nr);
    let key = BurstKey {
        tgid,
        nr: nr as i32,
        ret: ret as i32,
        _pad: 0,
        path,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let mut suppressed = 0;
    if let Some(burst) = BURSTS.get_ptr_mut(key) {
        let burst = unsafe { &mut *burst };
        if now.wrapping_sub(burst.last_sent_ns) < SYSCALL_ERROR_INTERVAL_NS {
            burst.suppressed += 1;
            return Ok(());
        }
        suppressed = burst.suppressed;
        burst.last_sent_ns = now;
        burst.suppressed = 0;
    } else {
        BURSTS.insert(
            key,
            Burst {
                last_sent_ns: now,
                suppressed: 0,
                _pad: 0,
            },
            0,
        )?;
    }
    let rlimits = current_rlimits();
    submit(|e: &mut SyscallErrorEvent| {
        e.nr = nr as i32;
        e.ret = ret as i32;
        e.suppressed = suppressed;
        if let Some(rlimits) = rlimits {
            e.rlimits_read = 1;
            e.rlimits = rlimits;
        }
        // Only a refused access is checked against the mode bits later.
        if ret == -EACCES && current_creds(&mut e.creds).is_some() {
            e.creds_read = 1;
        }
        if path != 0 {
            let _ = unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut e.path) };
        }
    });
    Ok(())
}

/// The current task's soft limits of [`RLIMITS_REPORTED`]: the values the failure met, read
/// before the process can change or lose them.
fn current_rlimits() -> Option<[u64; 3]> {
    if layout!(structs.task_signal) == ABSENT || layout!(structs.signal_rlim) == ABSENT {
        return None;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let signal: u64 = member(task, layout!(structs.task_signal))?;
    let rlim = (signal as *const u8).wrapping_add(layout!(structs.signal_rlim) as usize);
    let mut out = [0u64; 3];
    for (slot, resource) in out.iter_mut().zip(RLIMITS_REPORTED) {
        // struct rlimit { rlim_cur, rlim_max }: 16 bytes each.
        let at = rlim.wrapping_add(resource as usize * 16);
        *slot = unsafe { bpf_probe_read_kernel(at.cast()) }.ok()?;
    }
    Some(out)
}

/// The current task's file-access credentials, its parent and its root directory's identity.
#[inline(always)]
fn current_creds(out: &mut TaskCreds) -> Option<()> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let cred: *const u8 = member(task, layout!(structs.task_cred))?;
    out.fsuid = member(cred, layout!(structs.cred_fsuid))?;
    out.fsgid = member(cred, layout!(structs.cred_fsgid))?;
    // kernel_cap_t is a u64 since 6.3 and a `u32 cap[2]` before: the same bytes either way.
    out.cap_effective = member(cred, layout!(structs.cred_cap_effective))?;
    let groups: *const u8 = member(cred, layout!(structs.cred_group_info))?;
    let ngroups: i32 = member(groups, layout!(structs.group_info_ngroups))?;
    out.ngroups = ngroups as u32;
    if layout!(structs.group_info_gid) == ABSENT {
        return None;
    }
    let gids = groups.wrapping_add(layout!(structs.group_info_gid) as usize);
    for i in 0..GROUPS_REPORTED {
        if i as i32 >= ngroups {
            break;
        }
        out.groups[i] = unsafe { bpf_probe_read_kernel(gids.wrapping_add(i * 4).cast()) }.ok()?;
    }
    let parent: *const u8 = member(task, layout!(structs.task_real_parent))?;
    out.parent_tgid = member(parent, layout!(structs.task_tgid))?;
    // The root's identity is optional: without it only a living task's root can be used.
    let root = || -> Option<(u32, u64)> {
        let fs: *const u8 = member(task, layout!(structs.task_fs))?;
        let path = fs.wrapping_add(layout!(structs.fs_root) as usize);
        let dentry: *const u8 = member(path, layout!(structs.path_dentry))?;
        let inode: *const u8 = member(dentry, layout!(structs.dentry_inode))?;
        let sb: *const u8 = member(inode, layout!(structs.inode_sb))?;
        Some((
            member(sb, layout!(structs.sb_dev))?,
            member(inode, layout!(structs.inode_ino))?,
        ))
    };
    if layout!(structs.fs_root) != ABSENT {
        if let Some((dev, ino)) = root() {
            out.root_dev = dev;
            out.root_ino = ino;
        }
    }
    Some(())
}
