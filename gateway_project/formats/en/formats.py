"""How the admin writes dates and times (Django's date format characters); the times are UTC."""

DATETIME_FORMAT = "j M Y, H:i:s"
DATE_FORMAT = "j M Y"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
