"""The AWS Secrets Manager backend, through boto3. One secret per host per stack, one for the
spamd sync key; rotation uses Secrets Manager's own staging labels."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import SecretStr

from .store import CURRENT, PENDING, SecretVersion, refuse_if_too_large, secret_error

_NEEDED = {
    "GetSecretValue": "secretsmanager:GetSecretValue",
    "CreateSecret": "secretsmanager:CreateSecret",
    "PutSecretValue": "secretsmanager:PutSecretValue",
    "UpdateSecretVersionStage": "secretsmanager:UpdateSecretVersionStage",
    "DescribeSecret": "secretsmanager:DescribeSecret",
}


class AwsStore:
    def __init__(self, region: str | None, profile: str | None = None, endpoint_url: str | None = None):
        import boto3

        session = boto3.session.Session(profile_name=profile, region_name=region)
        self.client = session.client("secretsmanager", endpoint_url=endpoint_url)

    def _call(self, secret_id: str, operation: str, **arguments):
        try:
            return getattr(self.client, _snake(operation))(**arguments)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                return None
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403 or code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException"):
                raise secret_error(secret_id, f"access denied ({code or status}); grant {_NEEDED.get(operation, operation)} on it (docs/operating.md: Secrets backends)") from None
            raise secret_error(secret_id, f"Secrets Manager refused {operation} ({code})") from None
        except NoCredentialsError:
            raise secret_error(secret_id, "no AWS credentials; set a profile in mailsite:secrets.profile or AWS_* variables") from None
        except BotoCoreError as error:
            raise secret_error(secret_id, f"Secrets Manager unreachable ({type(error).__name__})") from None

    def read(self, secret_id: str, label: str = CURRENT) -> SecretVersion | None:
        answer = self._call(secret_id, "GetSecretValue", SecretId=secret_id, VersionStage=label)
        if answer is None:
            return None
        return SecretVersion(SecretStr(answer["SecretString"]), answer["VersionId"])

    def create(self, secret_id: str, value: str, description: str = "smtpd queue encryption key (mailsite)") -> SecretVersion:
        refuse_if_too_large(secret_id, value)
        answer = self._call(secret_id, "CreateSecret", Name=secret_id, SecretString=value,
                            Description=description, Tags=[{"Key": "mailsite", "Value": "key"}])
        return SecretVersion(SecretStr(value), answer["VersionId"])

    def put_current(self, secret_id: str, value: str) -> SecretVersion:
        refuse_if_too_large(secret_id, value)
        # Without VersionStages the new version takes AWSCURRENT, and Secrets Manager moves
        # AWSPREVIOUS onto the old one, in one call.
        answer = self._call(secret_id, "PutSecretValue", SecretId=secret_id, SecretString=value)
        if answer is None:
            raise secret_error(secret_id, "does not exist; create it first")
        return SecretVersion(SecretStr(value), answer["VersionId"])

    def put_pending(self, secret_id: str, value: str) -> SecretVersion:
        refuse_if_too_large(secret_id, value)
        answer = self._call(secret_id, "PutSecretValue", SecretId=secret_id, SecretString=value, VersionStages=[PENDING])
        if answer is None:
            raise secret_error(secret_id, "does not exist; create it with: python -m mailsite secrets init")
        return SecretVersion(SecretStr(value), answer["VersionId"])

    def _stages(self, secret_id: str) -> dict[str, list[str]]:
        answer = self._call(secret_id, "DescribeSecret", SecretId=secret_id)
        return (answer or {}).get("VersionIdsToStages", {})

    def _version_with(self, secret_id: str, label: str) -> str | None:
        return next((v for v, stages in self._stages(secret_id).items() if label in stages), None)

    def promote(self, secret_id: str) -> None:
        pending, current = self._version_with(secret_id, PENDING), self._version_with(secret_id, CURRENT)
        if pending is None:
            raise secret_error(secret_id, "has no pending version to promote")
        # Moving AWSCURRENT makes Secrets Manager label the old version AWSPREVIOUS by itself.
        self._call(secret_id, "UpdateSecretVersionStage", SecretId=secret_id, VersionStage=CURRENT,
                   MoveToVersionId=pending, RemoveFromVersionId=current)
        self._call(secret_id, "UpdateSecretVersionStage", SecretId=secret_id, VersionStage=PENDING,
                   RemoveFromVersionId=pending)

    def discard_pending(self, secret_id: str) -> None:
        self.unlabel(secret_id, PENDING)

    def label(self, secret_id: str, label: str, version: str) -> None:
        # Secrets Manager staging labels are ours to name; one version holds each at a time.
        arguments = {"MoveToVersionId": version}
        if (holder := self._version_with(secret_id, label)) is not None:
            arguments["RemoveFromVersionId"] = holder
        self._call(secret_id, "UpdateSecretVersionStage", SecretId=secret_id, VersionStage=label, **arguments)

    def unlabel(self, secret_id: str, label: str) -> None:
        holder = self._version_with(secret_id, label)
        if holder is not None:
            self._call(secret_id, "UpdateSecretVersionStage", SecretId=secret_id, VersionStage=label, RemoveFromVersionId=holder)


def _snake(operation: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")
