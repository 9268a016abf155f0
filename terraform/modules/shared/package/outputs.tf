output "requirement" {
  description = "What spotrelay-fetch-package fetches: the s3:// URL as given, spotrelay==X for a bare version, \"spotrelay @ URL\" for a wheel URL, else the requirement as given."
  value       = local.requirement
}

output "sha256" {
  description = "The checked sha256 of the package file (null when not given)."
  value       = var.sha256
}

output "s3_object" {
  description = "bucket/key of the wheel in S3 the instance role must read (s3:GetObject), or null when the package does not come from S3."
  value       = local.s3_object
}

output "fetch_script" {
  description = "The text of fetch-package.sh, written by cloud-init as /usr/local/sbin/spotrelay-fetch-package. It is terse on purpose: it counts against the 16 KB user-data limit."
  value       = file("${path.module}/fetch-package.sh")
}
