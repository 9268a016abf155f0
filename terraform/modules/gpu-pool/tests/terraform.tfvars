# Inputs every gpu-pool test file shares (terraform test reads this file;
# a file's or a run's own variables win).

name                     = "llm-gpu"
vpc_id                   = "vpc-0123456789abcdef0"
subnet_ids               = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
router_url               = "http://internal-llm-heartbeat-123.us-east-1.elb.amazonaws.com:8081"
router_security_group_id = "sg-0123456789abcdef0"
node_token_parameter_arn = "arn:aws:ssm:us-east-1:123456789012:parameter/spotrelay/llm/node-token"
model = {
  name = "Qwen/Qwen2.5-7B-Instruct"
}
# The instance-fit check (model_fit_known) needs the model's size.
model_params_billion = 7.6
spotrelay = {
  pip_spec = "s3://llm-artifacts/spotrelay/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/spotrelay-0.1.0-py3-none-any.whl"
  sha256   = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
}
