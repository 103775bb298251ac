# escape=`
FROM mcr.microsoft.com/windows/servercore:ltsc2022
SHELL ["powershell", "-Command", "$ErrorActionPreference = 'Stop';"]
RUN New-Item -ItemType Directory C:\app ; `
    Set-Location C:\app ; `
    Write-Host 'ready'
COPY app.ps1 C:\app\
CMD ["powershell", "C:\\app\\app.ps1"]
