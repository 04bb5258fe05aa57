package cluster

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// Build compiles the raftexample server into dir and returns its path. With
// race, the binary carries the race detector, so a data race inside a
// member under faults makes it exit, which the harness reports. Tags are
// build tags: "failpoints" compiles in the crash points RestartArmed arms.
func Build(dir string, race bool, tags ...string) (string, error) {
	bin := filepath.Join(dir, "raftexample")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command("go", append(args, "raftexample")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build raftexample: %w\n%s", err, out)
	}
	return bin, nil
}
