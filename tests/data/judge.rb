# A judge of --serve: the AWS SDK for Ruby (Debian 12's ruby-aws-sdk-core 3.168), from its default
# credential chain; one JSON line: the provider it found, if any (tests/test_sdk_judges.py).
require "json"
require "aws-sdk-core"
begin
  provider = Aws::CredentialProviderChain.new.resolve
  line = { "provider" => provider ? provider.class.name : nil }
  if provider
    line["key"] = provider.credentials && provider.credentials.access_key_id
  end
rescue StandardError => e
  line = { "error" => e.class.name }
end
puts JSON.generate(line)
