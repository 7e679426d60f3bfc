// A plugin whose step allocates far more memory than any limit allows.
package main

import (
	"qkdkms/plugins/sdk"
	"qkdkms/plugins/steps"
)

type oom struct{}

var keep [][]byte

func (oom) Step(steps.Input) (steps.Result, error) {
	for i := 0; i < 64; i++ {
		b := make([]byte, 64<<20)
		b[len(b)-1] = 1
		keep = append(keep, b)
	}
	return steps.Result{Done: true}, nil
}

func init() {
	sdk.Register(func(steps.Role, []byte, []byte) (steps.Step, error) { return oom{}, nil })
}

func main() {}
