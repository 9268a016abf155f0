# Pure logic of the router deployment: router.yaml, per-slot placement and
# cloud-init user data. No provider, so `terraform test` runs it offline.

locals {
  # router.yaml: keys of spotrelay.router.settings.RouterConfig.
  router_settings = {
    server = {
      host               = "0.0.0.0"
      port               = var.port
      workers            = 1
      worker_class       = "gevent"
      worker_connections = var.settings.worker_connections
    }
    auth = {
      node_token_file = "/etc/spotrelay/node-token"
    }
    registry = {
      ttl_s            = var.settings.ttl_s
      allowed_networks = var.settings.allowed_networks
    }
    routing = {
      no_capacity_wait_s = var.settings.no_capacity_wait_s
    }
    retry = {
      max_attempts = var.settings.max_attempts
    }
    timeouts = {
      first_byte_s  = var.settings.first_byte_s
      stream_idle_s = var.settings.stream_idle_s
    }
    resume = {
      enabled = var.settings.resume_enabled
    }
  }
  router_yaml = "# Written by terraform (router module); keys: docs/router.md\n${yamlencode(local.router_settings)}"

  # Slot i lives in subnet i mod subnet_count: routers spread over AZs.
  slots = [for i in range(var.router_count) : {
    index        = i
    subnet_index = i % var.subnet_count
    name         = "${var.name}-router-${i}"
  }]

  tags = merge(
    {
      "spotrelay:router" = var.name
      "ManagedBy"        = "terraform"
    },
    var.tags,
  )

  user_data = [for i, eni in var.network_interface_ids : templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    router_yaml = local.router_yaml
    install_script = templatefile("${path.module}/templates/install.sh.tftpl", {
      spotrelay_pip_spec   = var.spotrelay_pip_spec
      region               = var.region
      node_token_parameter = var.node_token_parameter
      network_interface_id = eni
      slot                 = i
    })
    fetch_secret = file("${path.module}/templates/fetch-secret.py")
    attach_eni   = file("${path.module}/templates/attach-eni.py")
  })]
}

check "router_redundancy" {
  assert {
    condition     = var.router_count >= 2
    error_message = "A single router is a single point of failure; use router_count >= 2 in production."
  }
}
