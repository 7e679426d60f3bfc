package main

import "qkdkms/testcluster/demo"

// The demo commands stay in the server binary: `make run` is `bin/qkdkms
// demo`, and the compose deployment's init service runs `qkdkms demo-init`
// (deploy/README.md). The failover experiments are the lab command's
// (testcluster/cmd/qkdkms-lab), so that this binary links no plotting code.
func init() {
	register("demo", "run the two-site demo (make run): demo [flags]", demo.RunDemo)
	register("demo-init", "write a demo layout (PKI, KEKs, node configs): demo-init [flags]", demo.DemoInit)
}
