// Command pause is the pod sandbox ("infra") process for the local cluster.
//
// Every pod's namespaces are held by one process that does nothing; upstream ships it as an
// image, which this environment cannot pull, so hack/cluster.sh builds this static binary and
// packs it as the sandbox image. Like upstream's pause it exits on SIGINT/SIGTERM and reaps
// zombies, since it is PID 1 when the pod shares its process namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("cairn pause\n")
		return
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
