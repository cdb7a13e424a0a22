package pgserver

import (
	"os/exec"
	"runtime"
)

// process is a child process whose exit is observed by a goroutine that
// owns the OS thread that forked it.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	// err is cmd.Wait's result, set before done is closed.
	err error
}

// startProcess starts cmd so that the kernel kills it when this process
// dies (see dieWithParent). The kernel sends the parent-death signal when
// the thread that forked the child exits, not the whole process, and the Go
// runtime may retire any thread, so cmd is started on a locked thread by a
// goroutine that stays alive, waiting for cmd, as long as cmd runs.
func startProcess(cmd *exec.Cmd) (*process, error) {
	dieWithParent(cmd)
	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go p.run(started)
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

func (p *process) run(started chan<- error) {
	// Never unlocked: when this goroutine returns the runtime ends the
	// thread, which is harmless once the child has exited (or never ran).
	runtime.LockOSThread()
	if err := p.cmd.Start(); err != nil {
		started <- err
		return
	}
	started <- nil
	p.err = p.cmd.Wait()
	close(p.done)
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}
