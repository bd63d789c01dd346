"""What a test of a real reply accepts as heard out: `completed`, or `incomplete` when the
token cap ended it (`max_output_tokens`, as the Realtime API reports it). Neither was cut off."""

HEARD_OUT = ("completed", "incomplete")
