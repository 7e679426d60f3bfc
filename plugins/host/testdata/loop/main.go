// A plugin whose step never returns.
package main

import (
	"qkdkms/plugins/sdk"
	"qkdkms/plugins/steps"
)

type loop struct{ x uint64 }

var sink uint64

func (l *loop) Step(steps.Input) (steps.Result, error) {
	for {
		l.x = l.x*6364136223846793005 + 1
		sink = l.x
	}
}

func init() {
	sdk.Register(func(steps.Role, []byte, []byte) (steps.Step, error) { return &loop{}, nil })
}

func main() {}
