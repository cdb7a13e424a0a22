package pgserver

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// runDirPrefix starts the name of every directory a server runs in, followed
// by the PID of the process that owns it, so that a later run can tell
// whose it is and whether that process is still alive.
const runDirPrefix = "sprocketspg-pg-"

// nobodyID is the uid and gid of nobody on most systems, used when the user
// database has no such user.
const nobodyID = 65534

// runUser is who the server runs as.
type runUser struct {
	// cred is nil when the server runs as the current user.
	cred *syscall.Credential
	name string
}

func (u runUser) uid() int {
	if u.cred == nil {
		return os.Geteuid()
	}
	return int(u.cred.Uid)
}

func (u runUser) gid() int {
	if u.cred == nil {
		return os.Getegid()
	}
	return int(u.cred.Gid)
}

// chown gives path to the server's user; it is a no-op when the server runs
// as the current user.
func (u runUser) chown(path string) error {
	if u.cred == nil {
		return nil
	}
	if err := os.Lchown(path, int(u.cred.Uid), int(u.cred.Gid)); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, u.name, err)
	}
	return nil
}

// serverUser returns the current user, or nobody when the current user is
// root because PostgreSQL refuses to run as root.
func serverUser() runUser {
	if os.Geteuid() != 0 {
		return runUser{name: strconv.Itoa(os.Geteuid())}
	}
	uid, gid := uint32(nobodyID), uint32(nobodyID)
	if u, err := user.Lookup("nobody"); err == nil {
		if n, err := strconv.ParseUint(u.Uid, 10, 32); err == nil {
			uid = uint32(n)
		}
		if n, err := strconv.ParseUint(u.Gid, 10, 32); err == nil {
			gid = uint32(n)
		}
	}
	// An empty, non-nil Groups drops root's supplementary groups.
	return runUser{
		cred: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}},
		name: "nobody",
	}
}

// baseDirCandidates lists where run directories may go, best first: tmpfs
// makes initdb, the cluster copy and CREATE DATABASE much faster.
func baseDirCandidates() []string {
	dirs := []string{"/dev/shm", os.TempDir()}
	if dirs[1] != "/tmp" {
		dirs = append(dirs, "/tmp")
	}
	return dirs
}

// makeRunDir creates a fresh run directory, owned by u, in the first
// candidate where that works and that u can reach, after removing the run
// directories of dead processes found there.
func makeRunDir(candidates []string, u runUser, logf func(string, ...any)) (string, error) {
	var reasons []string
	for _, base := range candidates {
		if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
			reasons = append(reasons, fmt.Sprintf("%s: not a directory", base))
			continue
		}
		if err := traversable(base, u); err != nil {
			reasons = append(reasons, err.Error())
			continue
		}
		removeStale(base, runDirPrefix, logf)
		dir, err := os.MkdirTemp(base, runDirPrefix+strconv.Itoa(os.Getpid())+"-")
		if err != nil {
			reasons = append(reasons, fmt.Sprintf("create run directory in %s: %v", base, err))
			continue
		}
		if err := u.chown(dir); err != nil {
			_ = os.RemoveAll(dir)
			return "", err
		}
		return dir, nil
	}
	return "", fmt.Errorf("create run directory: %s", strings.Join(reasons, "; "))
}

// traversable checks that u can reach dir: the server opens files below
// it by path, so every directory up to the root needs search permission.
func traversable(dir string, u runUser) error {
	if u.cred == nil {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", dir, err)
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("check %s: %w", p, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		mode := fi.Mode().Perm()
		var bit fs.FileMode = 0o001
		switch {
		case int(st.Uid) == u.uid():
			bit = 0o100
		case int(st.Gid) == u.gid():
			bit = 0o010
		}
		if mode&bit == 0 {
			return fmt.Errorf("%s is not searchable by %s (mode %v)", p, u.name, mode)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// removeStale removes the entries of base named prefix<pid>-... whose
// process no longer runs, after killing any process that still names one
// on its command line; they are left by processes killed before they
// could clean up.
func removeStale(base, prefix string, logf func(string, ...any)) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := ownerPID(e.Name(), prefix)
		if !ok || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		p := filepath.Join(base, e.Name())
		// A Patroni cluster's postmasters run as daemons that outlive
		// their owner when its reaper could not kill them; they must not
		// keep running on files that are gone.
		if err := killMentioning(e.Name()); err != nil {
			logf("pgserver: stop processes of stale %s: %v", p, err)
		}
		if err := os.RemoveAll(p); err != nil {
			logf("pgserver: remove stale %s: %v", p, err)
		}
	}
}

// ownerPID parses the PID out of prefix<pid>-<anything>.
func ownerPID(name, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	digits, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(digits)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// processAlive reports whether pid names a process that has not exited. A
// zombie counts as dead: it runs nothing and, in a container whose init
// does not reap, may linger for good.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		// No /proc (not Linux): trust kill.
		return true
	}
	// The state follows the command name, which is in parentheses and
	// may itself contain spaces and parentheses.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return true
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// copyTree copies the directory src to dst, which must not exist, keeping
// permission bits, and gives every copy to u. The copy of a cluster is
// bound by system calls per file, so files are copied by several workers.
func copyTree(src, dst string, u runUser) error {
	type job struct {
		from, to string
		perm     fs.FileMode
	}
	jobs := make(chan job)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	failed := func() error {
		mu.Lock()
		defer mu.Unlock()
		return firstErr
	}
	// More workers than CPUs still help a little, the kernel's side of
	// the copy overlapping; beyond 8 nothing was gained.
	for range max(4, min(runtime.GOMAXPROCS(0), 8)) {
		wg.Go(func() {
			buf := make([]byte, 256<<10)
			for j := range jobs {
				err := copyFile(j.from, j.to, j.perm, buf)
				if err == nil {
					err = u.chown(j.to)
				}
				if err != nil {
					fail(err)
				}
			}
		})
	}
	walkErr := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := failed(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
			// Mkdir's mode is filtered by the umask.
			if err := os.Chmod(target, info.Mode().Perm()); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		case d.Type().IsRegular():
			jobs <- job{from: path, to: target, perm: info.Mode().Perm()}
			return nil
		default:
			return fmt.Errorf("copy %s: unsupported file type %v", path, d.Type())
		}
		return u.chown(target)
	})
	close(jobs)
	wg.Wait()
	if walkErr != nil {
		return walkErr
	}
	return failed()
}

func copyFile(src, dst string, perm fs.FileMode, buf []byte) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	// Hiding ReadFrom and WriteTo makes the copy use buf, where os.File's
	// own fallback would allocate a buffer for every file.
	if _, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, buf); err != nil {
		return err
	}
	return out.Chmod(perm)
}

// runDir makes a run directory for a process run as u, in the configured
// base directories or else the default ones.
func (c *config) runDir(u runUser) (string, error) {
	bases := c.baseDirs
	if bases == nil {
		bases = baseDirCandidates()
	}
	return makeRunDir(bases, u, c.logf)
}
