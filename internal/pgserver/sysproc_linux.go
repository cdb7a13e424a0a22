package pgserver

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel SIGKILL cmd when the thread that starts it
// exits, so that a server outlives no test binary, however it ends.
func dieWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
