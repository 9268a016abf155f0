# The launch template of a spotrelay instance group, hardened the same way for
# the GPU nodes and the routers: IMDSv2 only with hop limit 1 (the engine and
# the agent run on the host network, and it keeps containers from reaching
# the credentials), detailed monitoring, no public IP, encrypted gp3 volumes,
# tags on the instance, its volumes and its network interface. A new version
# is the default at once: the group's instance refresh rolls it out.
#
# The AMI is resolved at plan time, not at launch (no resolve:ssm: image): a
# replacement never boots a newer image than its peers, and a new image rolls
# out deliberately, by the instance refresh (whose auto rollback needs an AMI
# id), on the apply that reads it.

data "aws_ssm_parameter" "ami" {
  count = var.ami_id == null ? 1 : 0
  name  = var.ami_ssm_parameter
}

locals {
  image_id = var.ami_id != null ? var.ami_id : data.aws_ssm_parameter.ami[0].insecure_value
}

resource "aws_launch_template" "this" {
  name_prefix            = var.name_prefix
  description            = var.description
  image_id               = local.image_id
  instance_type          = var.instance_type
  user_data              = var.user_data_base64
  ebs_optimized          = true
  update_default_version = true

  iam_instance_profile {
    arn = var.instance_profile_arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  network_interfaces {
    device_index                = 0
    associate_public_ip_address = false
    delete_on_termination       = true
    security_groups             = var.security_group_ids
  }

  dynamic "block_device_mappings" {
    for_each = var.volumes
    content {
      device_name = block_device_mappings.value.device_name
      ebs {
        volume_size           = block_device_mappings.value.size_gib
        volume_type           = "gp3"
        throughput            = block_device_mappings.value.throughput
        iops                  = block_device_mappings.value.iops
        encrypted             = true
        kms_key_id            = var.kms_key_arn
        delete_on_termination = true
      }
    }
  }

  dynamic "tag_specifications" {
    for_each = ["instance", "volume", "network-interface"]
    content {
      resource_type = tag_specifications.value
      tags          = var.instance_tags
    }
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}
