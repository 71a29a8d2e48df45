# Current Packer installs the qemu builder as a plugin; Packer 1.6.6 has it built in and does not
# know this block, so it lives in a file of its own.
packer {
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = ">= 1.1.0"
    }
  }
}
