# Bake a GPU AMI with vLLM and spotrelay pre-installed, so a replacement node
# skips the pip install on its critical path (docs/deploy.md, "Cold start").
#
#   terraform -chdir=terraform/examples/complete output -raw gpu_pool_install_script > install.sh
#   packer init terraform/modules/gpu-pool/bake
#   packer build -var region=us-east-1 -var install_script=install.sh terraform/modules/gpu-pool/bake
#
# It runs the same bootstrap script the nodes run, with --bake: the two
# virtualenvs are created from the pinned pip specs and marked with them;
# nothing is started and no secret is fetched. Set the result as the pool's
# ami_id (examples/complete: gpu_ami_id). A node whose vLLM pin differs from
# the baked one installs its own at boot, so a stale image is slow, not wrong.

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type = string
}

variable "install_script" {
  type        = string
  description = "Path of the rendered bootstrap script (the install_script output)."
}

variable "source_ami_ssm_parameter" {
  type    = string
  default = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
}

variable "instance_type" {
  type        = string
  default     = "g6.xlarge"
  description = "A GPU type: the NVIDIA driver of the base AMI loads as on a node (no GPU work is done)."
}

variable "subnet_id" {
  type    = string
  default = null
}

locals {
  stamp = formatdate("YYYYMMDD-hhmm", timestamp())
}

source "amazon-ebs" "gpu" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = "ubuntu"
  ami_name      = "spotrelay-gpu-${local.stamp}"
  source_ami    = "{{ resolve:ssm:${var.source_ami_ssm_parameter} }}"

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 100
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }

  tags = {
    Name      = "spotrelay-gpu"
    ManagedBy = "packer"
  }
}

build {
  sources = ["source.amazon-ebs.gpu"]

  provisioner "file" {
    source      = var.install_script
    destination = "/tmp/spotrelay-install"
  }

  # The install script installs spotrelay only through this hash-checking fetcher.
  provisioner "file" {
    source      = "${path.root}/../../shared/package/fetch-package.sh"
    destination = "/tmp/spotrelay-fetch-package"
  }

  provisioner "shell" {
    inline = [
      "cloud-init status --wait || true",
      "sudo apt-get update -q && sudo apt-get install -y -q python3-venv mdadm xfsprogs",
      "sudo install -m 0755 /tmp/spotrelay-fetch-package /usr/local/sbin/spotrelay-fetch-package",
      "sudo bash /tmp/spotrelay-install --bake",
      "sudo rm -f /tmp/spotrelay-install /var/log/spotrelay-install.log",
      "sudo cloud-init clean --logs",
    ]
  }
}
