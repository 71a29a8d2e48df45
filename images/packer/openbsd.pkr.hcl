# One OpenBSD image for one MX: unattended install from the install media, then the host's
# site set (its rendered /etc and the job scripts) and keys, then the real parsers' checks.
# Driven by `python -m mailsite bake` / `pulumi up`, which write the var-file; see README.md.
# Packer 1.6.6 reads this file alone; current Packer also reads plugins.pkr.hcl beside it.

variable "iso_url" {
  type = string
}

variable "iso_checksum" {
  type        = string
  description = "sha256:<hex> of the install media"
}

variable "output_directory" {
  type = string
}

variable "vm_name" {
  type = string
}

variable "format" {
  type        = string
  description = "raw (Vultr snapshot) or qcow2 (libvirt volume)"
}

variable "accelerator" {
  type        = string
  description = "kvm when /dev/kvm is writable, otherwise tcg"
}

variable "nic_model" {
  type        = string
  description = "vmxnet3 (OpenBSD vmx0) or virtio-net (vio0): as the host will run"
}

variable "disk_size" {
  type = string
}

variable "http_directory" {
  type        = string
  description = "holds install.conf and the disklabel template, written per bake"
}

variable "http_port" {
  type        = string
  description = "the port install.conf names for the disklabel template"
}

variable "ssh_private_key_file" {
  type        = string
  description = "throwaway key of this bake, authorised by install.conf"
}

variable "site_set" {
  type        = string
  description = "siteXX.tgz: the host's rendered tree and install.site"
}

variable "key_archive" {
  type        = string
  description = "path of a 0600 tar of the host's key files (never in the site set, never a value here)"
}

variable "ssh_timeout" {
  type    = string
  default = "60m"
}

source "qemu" "openbsd" {
  iso_url          = var.iso_url
  iso_checksum     = var.iso_checksum
  output_directory = var.output_directory
  vm_name          = var.vm_name
  format           = var.format
  accelerator      = var.accelerator
  net_device       = var.nic_model
  disk_interface   = "virtio"
  disk_size        = var.disk_size
  memory           = 1024
  headless         = true
  http_directory   = var.http_directory
  http_port_min    = var.http_port
  http_port_max    = var.http_port

  # Autoinstall asks where its response file is: two short lines, each after a generous wait,
  # so a slow emulated keyboard or a slow TCG boot does not eat keystrokes.
  boot_wait = "45s"
  boot_command = [
    "a<enter><wait15>",
    "http://{{ .HTTPIP }}:{{ .HTTPPort }}/install.conf<enter>",
  ]

  communicator         = "ssh"
  ssh_username         = "root"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = var.ssh_timeout
  shutdown_command     = "shutdown -p now"
}

build {
  sources = ["source.qemu.openbsd"]

  provisioner "file" {
    source      = var.site_set
    destination = "/tmp/site.tgz"
  }

  # The keys as a file, by packer's own transfer (scp keeps the 0600 mode), into root's 0700 home:
  # a key never appears on a command line or in an environment, where a process list shows it.
  provisioner "file" {
    source      = var.key_archive
    destination = "/root/mailsite-keys.tar"
  }

  # As the installer does with a site set: unpack over /, run /install.site. Then the keys,
  # then pfctl -nf, smtpd -n and bgpd -n on the real OpenBSD: any failure fails the bake.
  provisioner "shell" {
    script = "${path.root}/finish.sh"
  }
}
