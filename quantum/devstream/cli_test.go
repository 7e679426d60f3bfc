package devstream

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func TestCLI(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.qkds"), filepath.Join(dir, "b.qkds")
	run := func(args ...string) (int, string, string) {
		var out, errb strings.Builder
		code := RunCLI(ctx, args, &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errs := run("record", "-alice", a, "-bob", b, "-frames", "2", "-pulses", "20000", "-km", "10", "-seed", "3")
	if code != 0 {
		t.Fatalf("record: %d %s", code, errs)
	}
	t.Log("\n" + out)
	code, out2, errs := run("compare", a, b)
	if code != 0 || out2 != out {
		t.Fatalf("compare: %d %s\n%s", code, errs, out2)
	}
	code, out, errs = run("dump", "-n", "2", b)
	if code != 0 || !strings.Contains(out, "qkds 1 bob") || strings.Count(out, "\nd ") != 4 {
		t.Fatalf("dump: %d %s\n%s", code, errs, out)
	}
	for _, args := range [][]string{nil, {"nope"}, {"record", "-alice", a}, {"compare", a}, {"dump"}, {"record", "-alice", a, "-bob", b, "-detector-eff", "2"}} {
		if code, _, _ := run(args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	if code, _, _ := run("compare", a, a); code != 1 {
		t.Errorf("compare of two Alice streams: exit %d, want 1", code)
	}
}
