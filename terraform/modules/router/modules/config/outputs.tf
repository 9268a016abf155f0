output "router_settings" {
  description = "router.yaml as an object."
  value       = local.router_settings
}

output "router_yaml" {
  description = "The rendered /etc/spotrelay/router.yaml."
  value       = local.router_yaml
}

output "user_data" {
  description = "Cloud-init user data of every router (one launch template for the whole group)."
  value       = local.user_data
}

output "user_data_base64" {
  description = "Base64 cloud-init user data, for the launch template."
  value       = base64encode(local.user_data)
}

output "install_script" {
  description = "The router bootstrap script cloud-init runs once."
  value       = local.install_script
}

output "unit_dropin" {
  description = "systemd drop-in for spotrelay-router.service handing the SSM secrets to the service."
  value       = local.unit_dropin
}

output "parameters" {
  description = "The SSM parameters the module creates (name, type, description); values are write-only."
  value       = local.parameters
}

output "public_paths" {
  description = "Path patterns the public listener forwards to the routers; anything else gets not_found."
  value       = local.public_paths
}

output "public_path_rules" {
  description = "public_paths in groups of at most five: one listener rule each (the ALB's limit per rule)."
  value       = local.public_path_rules
}

output "control_paths" {
  description = "Path patterns the internal heartbeat listener forwards to the routers; anything else gets not_found."
  value       = local.control_paths
}

output "not_found" {
  description = "The listeners' fixed 404 response (OpenAI-shaped JSON)."
  value       = local.not_found
}

output "exposure" {
  description = "For a set of probe paths: whether the public and the internal listener forward it."
  value       = local.exposure
}

output "resource_names" {
  description = "Names with AWS length limits: public_lb and heartbeat_lb (32 characters), registry (40)."
  value       = local.resource_names
}

output "instance_refresh" {
  description = "Rolling refresh preferences of the router group."
  value       = local.instance_refresh
}

output "data_plane_auth" {
  description = "Where the routers' data-plane API keys come from (SSM parameter, or null)."
  value       = var.api_keys_parameter

  precondition {
    condition     = !var.internet_facing || var.api_keys_parameter != null
    error_message = "An internet-facing load balancer needs api_keys_parameter: the data plane would be open to the internet."
  }
}

output "tags" {
  description = "Tags for every resource."
  value       = local.tags
}

output "load_balancer_idle_timeout" {
  description = "The load balancer idle timeout, checked against the router's timeouts."
  value       = var.load_balancer_idle_timeout

  precondition {
    condition     = var.load_balancer_idle_timeout > var.settings.first_byte_s && var.load_balancer_idle_timeout > var.settings.stream_idle_s
    error_message = "load_balancer_idle_timeout must exceed settings.first_byte_s and settings.stream_idle_s, or the load balancer cuts slow prefills and quiet streams."
  }
}

output "package_s3_object" {
  description = "bucket/key of the spotrelay wheel in S3 the routers may read (s3:GetObject), or null."
  value       = module.package.s3_object
}

output "monitoring_cidrs" {
  description = "monitoring_cidrs, checked to lie inside the VPC: the networks the routers' security group admits to /metrics on the control port."
  value       = var.monitoring_cidrs

  precondition {
    condition     = length(local.monitoring_outside_vpc) == 0
    error_message = "monitoring_cidrs must lie inside the VPC (/metrics is VPC-only): ${join(", ", local.monitoring_outside_vpc)} is not."
  }
}
