//! The lab's non-root users, for `become`: `cf-NAME-sudo` may run the agent through sudo without
//! a password (the rule [`crate::ssh::agent::sudoers_pattern`] prints, nothing more), and
//! `cf-NAME-pw`'s sudo always wants a password. Made by `lab up`, removed by `lab down`.
//!
//! Lab hosts share the machine's `/etc/passwd` and `/etc/sudoers.d`, so the users are the
//! machine's, named after the lab (labs live side by side). Each host has its own `/home` (a
//! private bind mount, see [`super::host::PRIVATE_DIRS`]), as separate servers have: an upload
//! staged in one host's home is not seen by another.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::sys;
use super::Error;

/// Where the lab's rules go (a name without a dot: sudo skips files whose name has one).
fn sudoers_file(lab: &str) -> PathBuf {
    PathBuf::from(format!("/etc/sudoers.d/compose-fleet-lab-{lab}"))
}

/// The user whose sudo runs the agent without a password.
pub fn sudo_user(lab: &str) -> String {
    format!("cf-{lab}-sudo")
}

/// The user whose sudo wants a password.
pub fn password_user(lab: &str) -> String {
    format!("cf-{lab}-pw")
}

/// A user's home, as every lab host sees it (each host has its own `/home`).
pub fn home(user: &str) -> String {
    format!("/home/{user}")
}

/// Whether sudo is installed (without it the lab has no `become` users).
pub fn sudo_installed() -> bool {
    ["/usr/bin/sudo", "/usr/sbin/visudo"]
        .iter()
        .all(|p| std::path::Path::new(p).exists())
}

/// Creates the lab's users (if missing) and their sudoers rules. The caller holds the command
/// lock: `useradd` refuses to run while another holds `/etc/passwd`'s lock.
pub fn ensure(lab: &str) -> Result<(), Error> {
    for user in [sudo_user(lab), password_user(lab)] {
        if uid_of(&user).is_some() {
            continue;
        }
        // `*`: no password can log in, but the account is not locked (sshd refuses locked
        // accounts even with a key when it does not use PAM, as the lab's sshd does not).
        sys::run(
            "useradd",
            &[
                "--no-create-home",
                "--home-dir",
                &home(&user),
                "--shell",
                "/bin/sh",
                "--password",
                "*",
                "--comment",
                &format!("compose-fleet lab {lab}"),
                &user,
            ],
        )?;
    }
    let text = format!(
        "# lab {lab}: written by `compose-fleet lab up`, removed by `lab down`.\n\
         {}\n\
         {} ALL=(ALL:ALL) ALL\n",
        crate::ssh::agent::sudoers_pattern(
            &sudo_user(lab),
            &home(&sudo_user(lab)),
            crate::ssh::agent::REMOTE_BIN_DIR
        ),
        password_user(lab),
    );
    let path = sudoers_file(lab);
    // Checked by visudo before sudo ever reads it: a broken file would break sudo for everyone.
    let tmp = PathBuf::from(format!("/etc/sudoers.d/.compose-fleet-lab-{lab}.new"));
    fs::write(&tmp, &text)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o440)))
        .map_err(|e| Error::Env(format!("cannot write {}: {e}", tmp.display())))?;
    if let Err(e) = sys::run("visudo", &["-c", "-q", "-f", &tmp.to_string_lossy()]) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Internal(format!(
            "the lab's sudoers rules do not parse: {e}\n{text}"
        )));
    }
    fs::rename(&tmp, &path).map_err(|e| Error::Env(format!("cannot write {}: {e}", path.display())))
}

/// Gives `user` a home in a host's private `/home` (`home_root`), owned by the user, 0700.
pub fn make_home(home_root: &std::path::Path, user: &str) -> Result<(), Error> {
    let Some((uid, gid)) = uid_of(user) else {
        return Ok(());
    };
    let dir = home_root.join(user);
    super::host::mkdir(&dir, 0o700)?;
    nix::unistd::chown(
        &dir,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|e| Error::Env(format!("cannot chown {}: {e}", dir.display())))
}

/// Removes the lab's users and rules; what is not there is skipped.
pub fn remove(lab: &str) {
    let _ = fs::remove_file(sudoers_file(lab));
    for user in [sudo_user(lab), password_user(lab)] {
        if uid_of(&user).is_some() {
            // `-f`: a session the host's teardown has not reaped yet must not keep the user.
            sys::run_quiet("userdel", &["-f", &user]);
        }
    }
}

/// The uid and gid of `user`, from the passwd database.
fn uid_of(user: &str) -> Option<(u32, u32)> {
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_fit_the_system_limit_for_every_lab_name() {
        let longest = "a".repeat(super::super::index::MAX_NAME_LEN);
        // useradd refuses names over 32 bytes.
        assert!(sudo_user(&longest).len() <= 32);
        assert!(password_user(&longest).len() <= 32);
    }
}
