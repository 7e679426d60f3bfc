package main

import "qkdkms/quantum/devstream"

func init() {
	register("devstream", "recorded QKD device streams: devstream record|dump|compare ... (see quantum/devstream/FORMAT.md)", devstream.RunCLI)
}
