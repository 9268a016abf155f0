output "router_settings" {
  description = "router.yaml as an object."
  value       = local.router_settings
}

output "router_yaml" {
  description = "The rendered /etc/spotrelay/router.yaml."
  value       = local.router_yaml
}

output "slots" {
  description = "One entry per router instance: index, subnet_index, name."
  value       = local.slots

  precondition {
    condition     = length(var.network_interface_ids) == var.router_count
    error_message = "network_interface_ids must have one entry per router slot."
  }
}

output "user_data" {
  description = "Cloud-init user data per slot, in slot order."
  value       = local.user_data
}

output "user_data_base64" {
  description = "Base64 cloud-init user data per slot, for launch templates."
  value       = [for u in local.user_data : base64encode(u)]
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
