package main

import "qkdkms/etsi/client"

func init() {
	register("sae", "ETSI 014 SAE client: sae status|enc|dec ... (see 'qkdkms sae -h')", client.RunCLI)
}
