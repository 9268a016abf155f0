# The spotrelay package both roles install: the wheel `spotrelay up` uploaded
# ("s3://bucket/key.whl", read with the instance role), a pip requirement
# ("spotrelay==X"), a bare version, or a wheel URL. Whatever the form,
# fetch-package.sh (cloud-init writes it as spotrelay-fetch-package) fetches
# one file and checks its sha256 before pip sees it; each role's boot script
# then installs that file with its own extras. One module so that the GPU
# nodes and the routers check the spec, read it, and fetch it the same way.

locals {
  is_s3     = startswith(var.pip_spec, "s3://")
  s3        = try(regex("^s3://([^/]+)/(.+)$", var.pip_spec), [null, null])
  s3_object = local.is_s3 ? "${local.s3[0]}/${local.s3[1]}" : null
  requirement = (
    local.is_s3 ? var.pip_spec :
    can(regex("^[0-9][0-9A-Za-z.+!-]*$", var.pip_spec)) ? "spotrelay==${var.pip_spec}" :
    can(regex("^[a-z]+://", var.pip_spec)) ? "spotrelay @ ${var.pip_spec}" :
    var.pip_spec
  )
}
